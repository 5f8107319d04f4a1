"""The RL maths against hand computations, and whole RL runs on tiny real models and a tiny dataset
(the evaluation of policies before and after RL: test_rl_evaluation.py)."""

import json

import draccus
import pytest
import torch

from data import cli
from data.clips import DatasetConfig
from policy.flow import FlowPolicy
from simulator import keys
from simulator.env import ImaginedEnvConfig
from tests.rl.conftest import SIZE
from train.rl.advantage_conditioned import AdvantageConditionedConfig
from train.rl.base import clipped_surrogate, gae, group_advantages, kl_k3
from train.rl.filtered_imitation import FilteredImitationConfig
from train.rl.grpo import GRPOConfig
from train.rl.loop import ALGORITHMS, RLConfig, train
from train.rl.ppo import PPOConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_group_advantages_standardise_within_groups_and_drop_equal_groups():
    returns = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, 0.0, 5.0, 1.0])
    adv, kept = group_advantages(returns, 2)
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0]), atol=1e-5)
    assert kept.tolist() == [True, True, False, False, False, False, True, True]
    adv4, _ = group_advantages(torch.tensor([0.0, 1.0, 2.0, 3.0]), 4)
    std = torch.tensor([0.0, 1.0, 2.0, 3.0]).std(correction=0)
    assert torch.allclose(adv4, (torch.tensor([0.0, 1.0, 2.0, 3.0]) - 1.5) / std, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(5), 2)


def test_gae_matches_a_hand_computation_and_stops_at_episode_ends():
    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [0.2], [0.1], [9.0]])  # the bootstrap 9 must be ignored: the episode ends at t=2
    alive = torch.ones(3, 1, dtype=torch.bool)
    adv, targets = gae(rewards, values, alive, gamma, lam)
    d2 = 2.0 - 0.1
    d1 = 0.0 + gamma * 0.1 - 0.2
    d0 = 1.0 + gamma * 0.2 - 0.5
    expected = torch.tensor([d0 + gamma * lam * (d1 + gamma * lam * d2), d1 + gamma * lam * d2, d2])
    assert torch.allclose(adv[:, 0], expected, atol=1e-6)
    assert torch.allclose(targets[:, 0], expected + values[:3, 0], atol=1e-6)
    # an episode that ended after step 0 takes nothing from the (dead) steps after it
    alive = torch.tensor([[True], [False], [False]])
    adv, _ = gae(rewards, values, alive, gamma, lam)
    assert adv[:, 0].tolist() == pytest.approx([1.0 - 0.5, 0.0, 0.0])


def test_the_surrogate_has_ratio_one_before_an_update_and_clips_after():
    old = torch.randn(6, 2) * 10
    loss, m = clipped_surrogate(old.clone(), old, torch.tensor([1.0, -1.0, 2.0, 0.5, -0.5, 0.0]), clip=0.2, dims=56)
    assert m["ratio"] == pytest.approx(1.0) and m["clip_fraction"] == 0.0 and m["approx_kl"] == pytest.approx(0.0)
    assert loss.item() == pytest.approx(-torch.tensor([1.0, -1.0, 2.0, 0.5, -0.5, 0.0]).mean().item())
    # a positive advantage gains nothing past 1 + clip
    new = old + 56 * torch.log(torch.tensor(1.5))
    loss, m = clipped_surrogate(new, old, torch.ones(6), clip=0.2, dims=56)
    assert loss.item() == pytest.approx(-1.2, abs=1e-5) and m["clip_fraction"] == 1.0
    assert kl_k3(old, old).item() == 0.0 and kl_k3(old, old + 1.0).item() > 0


def test_dr_grpo_keeps_the_size_of_return_differences():
    returns = torch.tensor([1.0, 1.02, 0.0, 1.0])
    scaled, _ = group_advantages(returns, 2)
    raw, kept = group_advantages(returns, 2, scale_by_std=False)
    assert torch.allclose(scaled, torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-4)  # noise and success alike
    assert torch.allclose(raw, torch.tensor([-0.01, 0.01, -0.5, 0.5]), atol=1e-6) and kept.all()


# Each algorithm at a tiny size: groups of 2 of the 4 envs, few gradient steps.
TINY_ALGORITHMS = {"grpo": lambda: GRPOConfig(group_size=2, min_return_std=0.0), "ppo": PPOConfig,
                   "advantage_conditioned": lambda: AdvantageConditionedConfig(group_size=2, steps_per_iteration=2,
                                                                               batch_size=8),
                   "filtered_imitation": lambda: FilteredImitationConfig(group_size=2, steps_per_iteration=2,
                                                                         batch_size=8)}


def rl_config(tiny_dataset, models, out, algorithm: str = "grpo", num_envs: int = 4, **kw) -> RLConfig:
    """A one-iteration run of 4 envs of 16 steps on the tiny models; ``algorithm`` by name (grpo, whose
    runs these tests pinned, unless given)."""
    settings = {"policy": models / "policy", "world_model": models / "world_model", "progress": models / "progress",
                "dataset": DatasetConfig(root=tiny_dataset, val_episodes=1), "iterations": 1,
                "env": ImaginedEnvConfig(num_envs=num_envs, max_steps=16), "eval_episodes": 0, "output_dir": out,
                "algorithm": TINY_ALGORITHMS[algorithm]()}
    return RLConfig(**settings | kw)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_iteration_of_every_algorithm_runs_and_changes_the_policy(algorithm, tiny_dataset, tiny_models, tmp_path):
    train(rl_config(tiny_dataset, tiny_models, tmp_path / "run", algorithm=algorithm))
    before = FlowPolicy.from_pretrained(tiny_models / "policy").state_dict()
    after = FlowPolicy.from_pretrained(tmp_path / "run" / "policy").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["iteration"] == 1 and record["chunks"] >= 4 and 0.0 <= record["success"] <= 1.0
    # the checkpoint holds tensors and plain containers only: it loads without unpickling code
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)
    assert state["iteration"] == 1 and state["generator"].dtype == torch.uint8


@pytest.fixture(scope="module")
def lerobot_policy(tiny_dataset, tmp_path_factory):
    """A tiny lerobot Diffusion Policy with the tiny dataset's statistics, saved as lerobot saves it."""
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    from policy.lerobot_adapter import LerobotPolicy, cpu_diffusion_config

    torch.manual_seed(0)
    config = cpu_diffusion_config(image_size=SIZE, device="cpu", down_dims=(16, 32), diffusion_step_embed_dim=16,
                                  spatial_softmax_num_keypoints=8, num_inference_steps=4)
    stats = LeRobotDatasetMetadata("reverie/lift", root=tiny_dataset).stats
    folder = tmp_path_factory.mktemp("lerobot") / "policy"
    LerobotPolicy.wrap(DiffusionPolicy(config), dataset_stats=stats).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("algorithm", ["grpo", "ppo", "filtered_imitation"])
def test_rl_trains_a_lerobot_diffusion_policy_that_loads_back_and_acts(algorithm, lerobot_policy, tiny_dataset,
                                                                       tiny_models, tmp_path):
    """DPPO (GRPO, PPO) and filtered imitation with lerobot's own loss, one iteration each; the
    filtered-imitation run is also evaluated before and after, on fewer envs than it rolls out (one
    episode on one env: each physics episode runs the task's whole 120-step horizon)."""
    from policy import load_policy
    from policy.lerobot_diffusion import LerobotDiffusionPolicy

    evaluated = algorithm == "filtered_imitation"
    train(rl_config(tiny_dataset, tiny_models, tmp_path / "run", algorithm=algorithm, policy=lerobot_policy,
                    eval_episodes=1 if evaluated else 0, eval_num_envs=1))
    trained = load_policy(tmp_path / "run" / "policy", num_envs=2)
    assert isinstance(trained, LerobotDiffusionPolicy)
    before, after = load_policy(lerobot_policy).state_dict(), trained.state_dict()
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    obs = {keys.image_key(v): torch.rand(2, 3, SIZE, SIZE) for v in ("front", "wrist")}
    trained.reset(obs, {})
    chunk = trained.select_action_chunk(obs | {keys.STATE: torch.zeros(2, 8), keys.TASK: ["lift"] * 2})
    assert chunk.shape == (2, 8, 7) and chunk.isfinite().all()
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["chunks"] >= 4
    if evaluated:
        report = json.loads((tmp_path / "run" / "rl_eval.json").read_text())
        assert report["table"]["physics_after"]["n"] == report["table"]["imagined_after"]["n"] == 1


def test_advantage_conditioning_refuses_a_lerobot_policy_when_configured(lerobot_policy, tiny_dataset, tiny_models,
                                                                           tmp_path):
    from train.rl.advantage_conditioned import AdvantageConditioned

    with pytest.raises(ValueError, match=r"advantage_conditioned.*reads no.*grpo, ppo, filtered_imitation"):
        rl_config(tiny_dataset, tiny_models, tmp_path, policy=lerobot_policy, algorithm="advantage_conditioned")
    from policy import load_policy

    with pytest.raises(TypeError, match=r"set_task_suffix.*grpo, ppo, filtered_imitation"):  # built by hand
        AdvantageConditioned(load_policy(lerobot_policy), AdvantageConditionedConfig(real_share=0.0), ("front", "wrist"))


def test_rl_in_physics_starts_groups_where_the_dataset_episodes_started(tiny_dataset, tiny_models, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from policy import camera_views
    from simulator import keys
    from train.rl.base import collect
    from train.rl.loop import make_env

    cfg = rl_config(tiny_dataset, tiny_models, tmp_path / "physics", simulator="physics")
    policy = FlowPolicy.from_pretrained(tiny_models / "policy")
    views, size = camera_views(policy)
    env, num_starts = make_env(cfg, views, size)
    train_episodes, _ = cfg.dataset.split()
    assert num_starts == len(train_episodes)
    obs, info = env.reset(options={"start_index": torch.tensor([0, 0, 1, 1])})
    # the physics start of start i is the dataset's training episode i, as collected
    data = LeRobotDataset("reverie/lift", root=tiny_dataset).hf_dataset
    episode, frame = torch.as_tensor(data["episode_index"]), torch.as_tensor(data["frame_index"])
    for b, i in ((0, 0), (2, 1)):
        row = int(torch.nonzero((episode == int(train_episodes[i])) & (frame == 0))[0])
        assert torch.allclose(info["object_state"][b], torch.as_tensor(data[row][keys.ENV_STATE]), atol=1e-5)
    rollouts = collect(env, policy, views, torch.tensor([0, 0, 1, 1]), seed=0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rollouts.images[0, 0], rollouts.images[0, 1]) and not torch.equal(rollouts.images[0, 0], rollouts.images[0, 2])
    assert not torch.equal(rollouts.actions[0, 0], rollouts.actions[0, 1])  # one start, different policy noise
    # without log-probabilities (advantage_conditioned) the policy acts as it normally does: its ODE
    # from per-env noise seeded by the generator, not the wider stochastic kernel
    plain = collect(env, policy, views, torch.tensor([0, 0, 1, 1]), seed=0, generator=torch.Generator().manual_seed(1),
                    log_prob=False)
    assert plain.samples is None
    seeds = torch.randint(0, 2**31 - 1, (4,), generator=torch.Generator().manual_seed(1)).tolist()
    obs = plain.observation(torch.zeros(4, dtype=torch.long), torch.arange(4), views)
    policy.reset(obs, {}, seeds=seeds)
    assert torch.allclose(plain.actions[0], policy.sample_ode(obs), atol=1e-5)
    env.close()
    # the control needs no world model or progress model when it is evaluated in physics only (one
    # episode of the task's whole horizon, before and after)
    cfg = rl_config(tiny_dataset, tiny_models, tmp_path / "physics", simulator="physics", world_model=None,
                    progress=tmp_path / "none", eval_episodes=1, eval_num_envs=1)
    train(cfg)
    record = json.loads((tmp_path / "physics" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["iteration"] == 1 and record["chunks"] >= 4 and record["return"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    report = json.loads((tmp_path / "physics" / "rl_eval.json").read_text())
    assert set(report["table"]) == {"physics_before", "physics_after"} and report["table"]["physics_after"]["n"] == 1
    with pytest.raises(ValueError, match="drop start_every"):
        rl_config(tiny_dataset, tiny_models, tmp_path, simulator="physics", start_every=4)
    with pytest.raises(ValueError, match="RL in imagination needs a world model"):
        rl_config(tiny_dataset, tiny_models, tmp_path, world_model=None)


def test_a_resumed_run_continues_exactly_and_reports_before_and_after(tiny_dataset, tiny_models, tmp_path):
    whole = rl_config(tiny_dataset, tiny_models, tmp_path / "whole", iterations=2)
    train(whole)
    # two evaluation episodes in two rounds of one env: each env of an evaluation is a robosuite scene to build
    split = rl_config(tiny_dataset, tiny_models, tmp_path / "split", iterations=1, eval_episodes=2, eval_num_envs=1)
    train(split)
    assert (tmp_path / "split" / "eval_before.json").is_file() and (tmp_path / "split" / "rl_eval.md").is_file()
    split.iterations = 2
    train(split)  # resumes at iteration 1; the "before" evaluation is reused
    a = FlowPolicy.from_pretrained(tmp_path / "whole" / "policy").state_dict()
    b = FlowPolicy.from_pretrained(tmp_path / "split" / "policy").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert len((tmp_path / "split" / "metrics.jsonl").read_text().splitlines()) == 2
    saved = json.loads((tmp_path / "split" / "rl_config.json").read_text())
    assert saved["iterations"] == 2 and saved["algorithm"]["type"] == "grpo"  # the extended run's
    # --config_path reads a run's settings back: the same run
    assert draccus.encode(cli.parse(RLConfig, ["--config_path", str(tmp_path / "split" / "rl_config.json")])) == saved
    report = json.loads((tmp_path / "split" / "rl_eval.json").read_text())
    assert set(report["table"]) == {"physics_before", "imagined_before", "physics_after", "imagined_after"}
    assert sum(report["agreement_after"][k] for k in ("both", "physics_only", "imagined_only", "neither")) == 2
    assert report["table"]["physics_before"]["n"] == 2 and (tmp_path / "split" / "learning_curve.png").stat().st_size > 0


class OpensAFile:
    """Unpickling it opens (creates) a file: what a tampered checkpoint could do instead."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_resumed_run_unpickles_no_code_from_its_checkpoint(tiny_dataset, tiny_models, tmp_path):
    cfg = rl_config(tiny_dataset, tiny_models, tmp_path / "run")
    train(cfg)
    state_file = tmp_path / "run" / "checkpoint" / "state.pt"
    state = torch.load(state_file, weights_only=True)
    torch.save(state | {"extra": OpensAFile(tmp_path / "opened")}, state_file)
    cfg.iterations = 2
    with pytest.raises(ValueError, match=r"state\.pt.*tensors"):
        train(cfg)
    assert not (tmp_path / "opened").exists()


def test_bad_rl_settings_get_clear_errors(tiny_dataset, tiny_models, tmp_path):
    with pytest.raises(TypeError, match="algorithm must be an algorithm's config.*--algorithm.type NAME"):
        RLConfig(dataset=DatasetConfig(root=tiny_dataset, val_episodes=1), algorithm="grpo")  # a name, not a config
    with pytest.raises(ValueError, match="multiple of the group size"):
        train(rl_config(tiny_dataset, tiny_models, tmp_path / "odd", num_envs=3))
    with pytest.raises(TypeError, match="which grpo needs"):
        train(rl_config(tiny_dataset, tiny_models, tmp_path / "scripted", policy="expert"))
