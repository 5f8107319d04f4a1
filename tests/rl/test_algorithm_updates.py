"""The algorithms' updates (GRPO, PPO with a critic, advantage-conditioned training)
on a tiny real FlowPolicy and hand-built rollouts (the samples drawn by the policy itself, so that
log-probabilities are exact)."""

import pytest
import torch

from data.clips import DatasetConfig
from policy.base import ActionSample
from policy.flow import FlowPolicy
from policy.scripted import ScriptedPolicy
from simulator import keys
from train.rl.advantage_conditioned import (
    AdvantageConditioned,
    AdvantageConditionedConfig,
    advantage_bins,
    advantage_words,
    bin_edges,
    conditioned_tasks,
    real_frames,
    success_bins,
)
from train.rl.base import Rollouts, group_advantages
from train.rl.grpo import GRPO, GRPOConfig
from train.rl.ppo import PPO, Critic, PPOConfig, RunningNorm, normalize_advantages, spatial_softmax

VIEWS, SIZE, H, A, S = ("front", "wrist"), 32, 4, 7, 8
TASK = "lift the cube"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_policy() -> FlowPolicy:
    torch.manual_seed(0)
    return FlowPolicy(views=VIEWS, image_size=SIZE, chunk_size=H, channels=(8, 8), width=32, depth=1, heads=2,
                      num_steps=2, rl_steps=2, action_mean=[0.1] * A, action_std=[0.5] * A).eval()


def tiny_ppo_config(**kw) -> PPOConfig:
    return PPOConfig(**{"critic_channels": (8, 8), "critic_width": 32, "minibatch_size": 64, **kw})


def make_rollouts(policy, lengths=(3, 2, 3, 1), returns_scale: float = 1.0, seed: int = 0) -> Rollouts:
    """len(lengths) episodes of up to max(lengths) chunk steps; with a policy, the actions are its
    own samples, without one, random actions."""
    g = torch.Generator().manual_seed(seed)
    T, B = max(lengths), len(lengths)
    images = torch.randint(0, 256, (T, B, len(VIEWS), 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    state = torch.randn(T, B, S, generator=g)
    alive = torch.arange(T)[:, None] < torch.tensor(lengths)[None]
    samples = None
    if policy is not None:
        per_step = []
        for t in range(T):
            obs = {keys.image_key(v): images[t, :, i].float() / 255.0 for i, v in enumerate(VIEWS)}
            per_step.append(policy.sample(obs | {keys.STATE: state[t], keys.TASK: [TASK] * B}, g))
        samples = ActionSample.cat(per_step)
        actions = samples.actions.view(T, B, H, A)
    else:
        actions = torch.randn(T, B, H, A, generator=g)
    rewards = torch.randn(T, B, generator=g) * returns_scale * alive
    return Rollouts(images=images, state=state, task=[TASK] * B, actions=actions, samples=samples, rewards=rewards,
                    alive=alive, success=torch.zeros(B, dtype=torch.bool), starts=torch.zeros(B, dtype=torch.long))


def parameters_of(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


# ---- GRPO ---------------------------------------------------------------------------------
def test_grpo_raises_a_known_reward_on_a_one_step_bandit():
    """The sign and the credit assignment of the update, with no world model in between: one
    observation, reward -|action - 0.3|. The anchor is off (kl_weight 0): with weight 1, at lr 1e-3,
    40 iterations did not move the reward (docs/benchmarks.md)."""
    policy = tiny_policy()
    grpo = GRPO(policy, GRPOConfig(group_size=8, lr=3e-3, minibatch_size=16, min_return_std=0.0, kl_weight=0.0), VIEWS)
    g = torch.Generator().manual_seed(0)
    B = 32
    images = torch.randint(0, 256, (1, 1, len(VIEWS), 3, SIZE, SIZE), generator=g, dtype=torch.uint8).expand(1, B, -1, -1, -1, -1)
    obs = {keys.image_key(v): images[0, :, i].float() / 255.0 for i, v in enumerate(VIEWS)}
    obs |= {keys.STATE: torch.zeros(B, S), keys.TASK: [TASK] * B}

    def reward(actions):
        return -(actions - 0.3).abs().mean((1, 2))

    def ode_reward():
        return reward(policy.sample_ode(obs, torch.Generator().manual_seed(1))).mean().item()

    before = ode_reward()
    for _ in range(16):
        with torch.no_grad():
            sample = policy.sample(obs, g)
        rollouts = Rollouts(images=images.clone(), state=torch.zeros(1, B, S), task=[TASK] * B, actions=sample.actions[None],
                            samples=sample, rewards=reward(sample.actions)[None], alive=torch.ones(1, B, dtype=torch.bool),
                            success=torch.zeros(B, dtype=torch.bool), starts=torch.zeros(B, dtype=torch.long))
        grpo.update(rollouts, g)
    assert ode_reward() > before + 0.05, (before, ode_reward())


# ---- PPO -----------------------------------------------------------------------------------
def test_ppo_small_maths():
    adv = normalize_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert adv.mean().abs() < 1e-6 and adv.std(correction=0).sub(1).abs() < 1e-5
    peak = torch.full((1, 1, 4, 4), -1e4)
    peak[0, 0, 0, 3] = 0.0  # top row, right column
    assert torch.allclose(spatial_softmax(peak), torch.tensor([[1.0, -1.0]]))
    norm, x = RunningNorm(3), torch.randn(50, 3) * 4 + 2
    norm.update(x[:20])
    norm.update(x[20:])
    assert torch.allclose(norm.mean, x.mean(0), atol=1e-5) and torch.allclose(norm.var, x.var(0, correction=0), atol=1e-4)
    critic = Critic(2, S)
    assert 100_000 < sum(p.numel() for p in critic.parameters()) < 300_000  # the default size
    assert critic(torch.rand(5, 2, 3, 64, 64), torch.randn(5, S)).shape == (5,)


def test_ppo_update_changes_the_policy_and_the_critic_and_round_trips():
    policy = tiny_policy()
    ppo = PPO(policy, tiny_ppo_config(lr=1e-3, minibatch_size=4), VIEWS)
    before, critic_before = parameters_of(policy), parameters_of(ppo.critic)
    metrics = ppo.update(make_rollouts(policy), torch.Generator().manual_seed(0))
    assert metrics["samples"] == 9 and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert not torch.equal(before, parameters_of(policy)) and not torch.equal(critic_before, parameters_of(ppo.critic))
    assert ppo.critic.state_norm.count == 9
    other = PPO(tiny_policy(), tiny_ppo_config(lr=1e-3, minibatch_size=4), VIEWS)
    other.load_state_dict(ppo.state_dict())
    assert torch.equal(parameters_of(other.critic), parameters_of(ppo.critic))
    assert torch.equal(other.critic.state_norm.mean, ppo.critic.state_norm.mean)


def test_ppo_ratio_is_one_on_the_first_minibatch():
    policy = tiny_policy()
    ppo = PPO(policy, tiny_ppo_config(epochs=1, minibatch_size=64), VIEWS)  # one minibatch of the 9 samples
    metrics = ppo.update(make_rollouts(policy), torch.Generator().manual_seed(0))
    assert metrics["clip_fraction"] == 0.0
    assert metrics["ratio"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["kl_to_base"] == pytest.approx(0.0, abs=1e-6)


def test_ppo_critic_loss_falls_on_a_fixed_rollout():
    policy = tiny_policy()
    # lambda 1: the value targets are the discounted returns, fixed, whatever the critic says.
    ppo = PPO(policy, tiny_ppo_config(gae_lambda=1.0, critic_lr=1e-2, lr=1e-5, minibatch_size=9), VIEWS)
    rollouts, gen = make_rollouts(policy, returns_scale=2.0), torch.Generator().manual_seed(0)
    losses = [ppo.update(rollouts, gen)["value_loss"] for _ in range(10)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_ppo_needs_log_probabilities():
    with pytest.raises(TypeError, match=r"needs.*grpo, ppo.*advantage_conditioned"):
        PPO(ScriptedPolicy("lift"), PPOConfig(), VIEWS)


# ---- advantage-conditioned ---------------------------------------------------------------------
def test_advantage_bins_and_words():
    assert torch.equal(bin_edges(2), torch.tensor([0.0]))
    assert torch.equal(advantage_bins(torch.tensor([-1.2, -0.1, 0.0, 0.1, 2.0]), 2), torch.tensor([0, 0, 0, 1, 1]))
    four = advantage_bins(torch.tensor([-3.0, -0.3, 0.3, 3.0]), 4)
    assert torch.equal(four, torch.tensor([0, 1, 2, 3]))
    assert advantage_words(1) == " advantage 1"
    assert torch.equal(success_bins(torch.tensor([True, False]), 3), torch.tensor([2, 0]))
    g = torch.Generator().manual_seed(0)
    assert conditioned_tasks(["a", "b"], torch.tensor([0, 1]), 0.0, g) == ["a advantage 0", "b advantage 1"]
    assert conditioned_tasks(["a", "b"], torch.tensor([0, 1]), 0.999999, g) == ["a", "b"]


def conditioned_loss(policy, rollouts: Rollouts, group_size: int) -> float:
    """The flow loss of every imagined chunk under its bin's words, with fixed noise."""
    from train.rl.base import group_advantages

    bins = advantage_bins(group_advantages(rollouts.returns, group_size)[0], 2)
    t, b = torch.nonzero(rollouts.alive, as_tuple=True)
    obs = rollouts.observation(t, b, VIEWS)
    obs[keys.TASK] = [task + advantage_words(int(bins[i])) for task, i in zip(obs[keys.TASK], b.tolist())]
    suffix = policy.task_suffix
    policy.set_task_suffix("")
    with torch.no_grad():
        loss = policy.loss(obs, rollouts.actions[t, b], None, torch.Generator().manual_seed(1)).item()
    policy.set_task_suffix(suffix)
    return loss


def test_advantage_conditioned_lowers_the_conditioned_loss_and_acts_with_the_top_bin():
    policy = tiny_policy()
    cfg = AdvantageConditionedConfig(group_size=2, real_share=0.0, steps_per_iteration=5, batch_size=9, lr=1e-2,
                                     shift=0)
    algorithm = AdvantageConditioned(policy, cfg, VIEWS)
    rollouts, gen = make_rollouts(None), torch.Generator().manual_seed(0)
    before = conditioned_loss(policy, rollouts, 2)
    for _ in range(3):
        metrics = algorithm.update(rollouts, gen)
    assert conditioned_loss(policy, rollouts, 2) < 0.85 * before
    assert metrics["groups_kept"] == 1.0 and metrics["real_share"] == 0.0
    assert policy.task_suffix == advantage_words(1) == policy.config.task_suffix
    fresh = AdvantageConditioned(tiny_policy(), cfg, VIEWS)  # a resumed run acts with the top bin at once
    fresh.load_state_dict(algorithm.state_dict())
    assert fresh.policy.task_suffix == advantage_words(1)


def test_advantage_conditioned_errors():
    with pytest.raises(TypeError, match="no loss or set_task_suffix"):
        AdvantageConditioned(ScriptedPolicy("lift"), AdvantageConditionedConfig(), VIEWS)
    with pytest.raises(ValueError, match="needs real data"):
        AdvantageConditioned(tiny_policy(), AdvantageConditionedConfig(), VIEWS)
    with pytest.raises(ValueError, match="dropout"):
        AdvantageConditionedConfig(dropout=1.0)
    with pytest.raises(ValueError, match="real_share"):
        AdvantageConditionedConfig(real_share=1.5)


def test_advantage_conditioned_mixes_real_frames_labelled_by_success(tiny_dataset):
    frames = real_frames(DatasetConfig(root=tiny_dataset, val_episodes=1), VIEWS, H)
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    table = LeRobotDataset("local/dataset", root=tiny_dataset).hf_dataset
    table = table.select_columns(["episode_index", keys.EPISODE_SUCCESS]).with_format("torch")[:]
    train_rows = table["episode_index"] < 3  # the training episodes: all but the last
    assert frames.success.tolist() == table[keys.EPISODE_SUCCESS].bool().flatten()[train_rows].tolist()
    assert frames.success.shape == (len(frames),) == (int(train_rows.sum()),)
    policy = tiny_policy()
    cfg = AdvantageConditionedConfig(group_size=2, real_share=0.5, steps_per_iteration=2, batch_size=8)
    metrics = AdvantageConditioned(policy, cfg, VIEWS, frames=frames).update(make_rollouts(None), torch.Generator())
    assert metrics["real_share"] == 0.5 and torch.isfinite(torch.tensor(metrics["flow_loss"]))
    assert policy.task_suffix == advantage_words(1)
    offline = AdvantageConditionedConfig(group_size=2, real_share=1.0, steps_per_iteration=1, batch_size=8)
    metrics = AdvantageConditioned(tiny_policy(), offline, VIEWS, frames=frames).update(make_rollouts(None), torch.Generator())
    assert metrics["real_share"] == 1.0  # the ablation: no imagined chunk in the batches


def test_filtered_imitation_trains_on_the_better_episodes_only_and_keeps_the_plain_task():
    from train.rl.filtered_imitation import FilteredImitation, FilteredImitationConfig

    policy = tiny_policy()
    cfg = FilteredImitationConfig(group_size=2, real_share=0.0, steps_per_iteration=5, batch_size=9, lr=1e-2, shift=0,
                                  memory=1)
    algorithm = FilteredImitation(policy, cfg, VIEWS)
    rollouts, gen = make_rollouts(None), torch.Generator().manual_seed(0)
    better = (group_advantages(rollouts.returns, 2)[0] > 0)  # one episode of each group of two
    t, b = torch.nonzero(rollouts.alive & better[None], as_tuple=True)
    obs = rollouts.observation(t, b, VIEWS)
    loss = lambda: policy.loss(obs, rollouts.actions[t, b], None, torch.Generator().manual_seed(1)).item()
    with torch.no_grad():
        before = loss()
    for _ in range(3):
        metrics = algorithm.update(rollouts, gen)
    assert metrics["samples"] == int(rollouts.alive[:, better].sum()) < int(rollouts.alive.sum())
    with torch.no_grad():
        assert loss() < 0.85 * before  # it imitates the better episodes' chunks under the plain task
    assert policy.task_suffix == "" and all(not t.endswith(advantage_words(0)) for t in obs[keys.TASK])


def test_filtered_imitation_draws_real_chunks_from_successful_episodes_when_asked(tiny_dataset):
    from train.rl.filtered_imitation import FilteredImitation, FilteredImitationConfig

    frames = real_frames(DatasetConfig(root=tiny_dataset, val_episodes=1), VIEWS, H)
    cfg = FilteredImitationConfig(group_size=2, real_share=1.0, real_successes_only=True, steps_per_iteration=1,
                                  batch_size=8)
    algorithm = FilteredImitation(tiny_policy(), cfg, VIEWS, frames=frames)
    assert torch.equal(algorithm.real_pool, torch.nonzero(frames.success).flatten()) and 0 < len(algorithm.real_pool)
    assert len(algorithm.real_pool) < len(frames)  # the tiny dataset has failures too, left out
    g = torch.Generator().manual_seed(0)
    real = algorithm._real(200, g)
    assert real["bins"].eq(1).all()  # every drawn chunk comes from a successful episode
    everything = FilteredImitation(tiny_policy(), FilteredImitationConfig(group_size=2, real_share=1.0), VIEWS,
                                   frames=frames)
    assert not everything._real(200, torch.Generator().manual_seed(0))["bins"].eq(1).all()
    with pytest.raises(ValueError, match="real_share"):
        FilteredImitationConfig(real_share=2.0)


def test_filtered_imitation_memory_keeps_the_last_iterations_kept_chunks_and_resumes_with_them():
    from train.rl.filtered_imitation import FilteredImitation, FilteredImitationConfig

    cfg = FilteredImitationConfig(group_size=2, real_share=0.0, steps_per_iteration=1, batch_size=4, shift=0, memory=2)
    algorithm = FilteredImitation(tiny_policy(), cfg, VIEWS)
    g = torch.Generator().manual_seed(0)
    batches = [make_rollouts(None, seed=s) for s in range(3)]
    kept = [algorithm.update(r, g)["samples"] for r in batches]
    assert min(kept) > 0
    assert [len(m["actions"]) for m in algorithm.memory] == kept[1:]  # the oldest iteration dropped out
    # the pool holds the second iteration's chunks, which the third iteration's rollouts do not
    second = batches[1]
    better = group_advantages(second.returns, 2)[0] > 0
    t, b = torch.nonzero(second.alive & better[None], as_tuple=True)
    assert torch.equal(algorithm.memory[0]["actions"], second.actions[t, b])

    resumed = FilteredImitation(tiny_policy(), cfg, VIEWS)
    resumed.load_state_dict(algorithm.state_dict())
    metrics = resumed.update(make_rollouts(None, seed=3), g)
    assert metrics["pool"] == kept[2] + metrics["samples"]  # the restored iteration and the new one
    with pytest.raises(ValueError, match="memory"):
        FilteredImitationConfig(memory=0)
