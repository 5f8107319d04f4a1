"""LerobotPolicy on tiny real lerobot policies: the DPPO step maths against diffusers, the
diffusion policy's chunks, samples and re-scoring, the checkpoint round trip, and the errors."""

import pytest
import torch
from diffusers import DDIMScheduler

from policy.base import ChunkPolicy, RLPolicy
from policy.lerobot_adapter import LerobotPolicy, cpu_diffusion_config, policy_features
from policy.lerobot_diffusion import LerobotDiffusionPolicy, ddim_step_gaussian
from simulator import keys

B = 2
VIEWS = ("front", "wrist")
ACTION_MIN, ACTION_MAX = -torch.ones(7), 2 * torch.ones(7)  # env units, to see the unnormalisation
STATS = {keys.ACTION: {"min": ACTION_MIN, "max": ACTION_MAX},
         keys.STATE: {"min": -torch.ones(8), "max": torch.ones(8)}}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_obs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    obs = {keys.image_key(v): torch.rand(B, 3, 64, 64, generator=g) for v in VIEWS}
    return {**obs, keys.STATE: torch.randn(B, 8, generator=g), keys.TASK: ["lift"] * B}


def make_scheduler(prediction_type: str) -> DDIMScheduler:
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                              prediction_type=prediction_type)
    scheduler.set_timesteps(10)
    return scheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_ddim_step_gaussian_matches_diffusers_eta_1(prediction_type):
    scheduler = make_scheduler(prediction_type)
    g = torch.Generator().manual_seed(0)
    x, out, z = (torch.randn(B, 8, 7, generator=g) for _ in range(3))
    for t in scheduler.timesteps[:-1]:  # the last step has no variance of its own
        t, prev_t = int(t), int(t) - 10
        expected = scheduler.step(out, t, x, eta=1.0, variance_noise=z).prev_sample
        mean, std = ddim_step_gaussian(scheduler, x, out, t, prev_t, eta=1.0, min_std=0.0)
        torch.testing.assert_close(mean + std * z, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(std, torch.full_like(x, float(scheduler._get_variance(t, prev_t)) ** 0.5))
        deterministic = scheduler.step(out, t, x, eta=0.0).prev_sample
        torch.testing.assert_close(ddim_step_gaussian(scheduler, x, out, t, prev_t, eta=0.0)[0], deterministic,
                                   atol=1e-5, rtol=1e-5)


def test_gaussian_step_log_prob_is_the_normal_density():
    from policy.base import gaussian_log_prob

    scheduler = make_scheduler("epsilon")
    x, out, x_next = torch.randn(3, B, 8, 7).unbind(0)
    mean, std = ddim_step_gaussian(scheduler, x, out, 50, 40, eta=1.0)
    expected = torch.distributions.Normal(mean, std).log_prob(x_next).flatten(1).sum(-1)
    torch.testing.assert_close(gaussian_log_prob(x_next, mean, std), expected)


def test_min_std_floors_the_std_and_leaves_the_mean():
    scheduler = make_scheduler("epsilon")
    x, out = torch.randn(2, B, 8, 7).unbind(0)
    _, std_last = ddim_step_gaussian(scheduler, x, out, 0, -10, eta=1.0, min_std=0.1)
    assert torch.all(std_last == 0.1)  # the last step has no variance: only the floor
    mean, std = ddim_step_gaussian(scheduler, x, out, 50, 40, eta=1.0, min_std=0.0)
    mean_floored, std_floored = ddim_step_gaussian(scheduler, x, out, 50, 40, eta=1.0, min_std=1.0)
    assert float(std[0, 0, 0]) < 1.0 and torch.all(std_floored == 1.0)
    torch.testing.assert_close(mean_floored, mean)


@pytest.fixture(scope="module")
def diffusion():
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    torch.manual_seed(0)
    return LerobotPolicy.wrap(DiffusionPolicy(cpu_diffusion_config(views=VIEWS, device="cpu")), num_envs=B,
                              dataset_stats=STATS)


def test_cpu_diffusion_config_trains(diffusion):
    batch = diffusion.preprocessor({**make_obs(), keys.STATE: make_obs()[keys.STATE].unsqueeze(1),
                                    keys.ACTION: torch.rand(B, 8, 7), "action_is_pad": torch.zeros(B, 8, dtype=bool)})
    diffusion.policy.train()
    loss, _ = diffusion.policy.forward(batch)
    loss.backward()
    assert loss.isfinite() and diffusion.policy.diffusion.unet.final_conv[1].weight.grad is not None
    diffusion.policy.zero_grad(set_to_none=True)
    diffusion.policy.eval()
    diffusion.policy.reset()
    assert diffusion.policy.select_action(diffusion.preprocessor(make_obs())).shape == (B, 7)  # lerobot's own API


def test_diffusion_chunks_in_env_units(diffusion):
    assert isinstance(diffusion, LerobotDiffusionPolicy) and isinstance(diffusion, ChunkPolicy)
    diffusion.reset(make_obs(), {})
    chunk = diffusion.select_action_chunk(make_obs())
    assert chunk.shape == (B, 8, 7) and chunk.dtype == torch.float32 and chunk.isfinite().all()
    # clip_sample keeps the policy-unit actions in [-1, 1], i.e. the stats' [min, max] in env units
    assert torch.all(chunk >= ACTION_MIN - 1e-5) and torch.all(chunk <= ACTION_MAX + 1e-5)


def test_sample_is_rescored_with_ratio_one_and_differentiable(diffusion):
    assert isinstance(diffusion, RLPolicy) and diffusion.supports_log_prob
    obs = make_obs()
    sample = diffusion.sample(obs, generator=torch.Generator().manual_seed(3))
    assert sample.actions.shape == (B, 8, 7) and sample.chain.shape == (B, 3, 8, 7)
    assert sample.log_probs.shape == (B, 2) and sample.times.tolist() == [10, 0]
    policy_units = sample.chain[:, -1]  # the final state, min-max unnormalised by hand
    torch.testing.assert_close(sample.actions, (policy_units + 1) / 2 * (ACTION_MAX - ACTION_MIN) + ACTION_MIN)

    log_probs = diffusion.log_prob(obs, sample)
    torch.testing.assert_close(log_probs, sample.log_probs, atol=1e-4, rtol=0)
    log_probs.sum().backward()
    grads = [p.grad for p in diffusion.policy.diffusion.unet.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    diffusion.policy.zero_grad(set_to_none=True)

    again = diffusion.sample(obs, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again.chain, sample.chain)
    torch.testing.assert_close(again.log_probs, sample.log_probs)


def test_save_and_load_give_the_same_actions(diffusion, tmp_path):
    diffusion.save_pretrained(tmp_path / "ckpt")
    loaded = LerobotPolicy.from_pretrained(tmp_path / "ckpt", num_envs=B)
    assert isinstance(loaded, LerobotDiffusionPolicy)
    for policy in (diffusion, loaded):
        policy.reset(make_obs(), {}, seeds=[7, 8])
    torch.testing.assert_close(loaded.select_action_chunk(make_obs(1)), diffusion.select_action_chunk(make_obs(1)))

    with pytest.raises(FileNotFoundError, match="empty"):
        LerobotPolicy.from_pretrained(tmp_path / "empty")


def test_load_policy_takes_the_folder_lerobot_train_prints(diffusion, tmp_path):
    """lerobot-train prints its output folder; the policy lies in checkpoints/last/pretrained_model."""
    from policy import LEROBOT_TRAIN_CHECKPOINT, load_policy
    from policy.lerobot_adapter import lerobot_policy_type

    diffusion.save_pretrained(tmp_path / "run" / LEROBOT_TRAIN_CHECKPOINT)
    loaded = load_policy(tmp_path / "run", num_envs=B)
    assert isinstance(loaded, LerobotDiffusionPolicy) and lerobot_policy_type(tmp_path / "run") == "diffusion"
    for policy in (diffusion, loaded):
        policy.reset(make_obs(), {}, seeds=[7, 8])
    torch.testing.assert_close(loaded.select_action_chunk(make_obs(1)), diffusion.select_action_chunk(make_obs(1)))
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        load_policy(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no saved policy"):
        load_policy(tmp_path / "empty")


def test_policy_without_log_probs_is_a_chunk_policy_but_not_an_rl_policy():
    from lerobot.configs import NormalizationMode
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    inputs, outputs = policy_features(VIEWS)
    config = ACTConfig(input_features=inputs, output_features=outputs, chunk_size=8, n_action_steps=8,
                       pretrained_backbone_weights=None, dim_model=32, n_heads=2, dim_feedforward=64,
                       n_encoder_layers=1, n_decoder_layers=1, use_vae=False, device="cpu",
                       normalization_mapping={"VISUAL": NormalizationMode.IDENTITY, "STATE": NormalizationMode.MIN_MAX,
                                              "ACTION": NormalizationMode.MIN_MAX})
    act = LerobotPolicy.wrap(ACTPolicy(config), num_envs=B, dataset_stats=STATS)
    assert type(act) is LerobotPolicy and not act.supports_log_prob
    assert isinstance(act, ChunkPolicy) and not isinstance(act, RLPolicy) and not hasattr(act, "sample")
    act.reset(make_obs(), {})
    assert act.select_action_chunk(make_obs()).shape == (B, 8, 7)
    for name in ("sample", "log_prob"):
        with pytest.raises(TypeError, match="grpo, ppo.*advantage_conditioned"):
            getattr(act, name)
    from train.rl.grpo import GRPO, GRPOConfig

    with pytest.raises(TypeError, match="which grpo needs.*advantage_conditioned"):
        GRPO(act, GRPOConfig(), VIEWS)


def test_missing_camera_is_named(diffusion):
    obs = make_obs()
    del obs[keys.image_key("wrist")]
    with pytest.raises(KeyError, match="observation.images.wrist"):
        diffusion.select_action_chunk(obs)
    with pytest.raises(ValueError, match="n_obs_steps"):
        LerobotDiffusionPolicy(diffusion.policy.__class__(cpu_diffusion_config(n_obs_steps=3, device="cpu")))


def test_the_adapter_is_a_torch_module_around_the_lerobot_policy(diffusion):
    import copy

    assert isinstance(diffusion, torch.nn.Module) and diffusion.device == torch.device("cpu")
    assert diffusion.state_dict().keys() == {f"policy.{k}" for k in diffusion.policy.state_dict()}
    assert sum(p.numel() for p in diffusion.parameters()) == sum(p.numel() for p in diffusion.policy.parameters())
    diffusion.train()
    assert diffusion.policy.training and diffusion.policy.diffusion.unet.training
    diffusion.eval()
    assert not diffusion.policy.training
    anchor = copy.deepcopy(diffusion).requires_grad_(False)  # RL's KL anchor
    with torch.no_grad():
        next(diffusion.parameters()).add_(1.0)
    assert not torch.equal(next(anchor.parameters()), next(diffusion.parameters()))
    anchor.load_state_dict(diffusion.state_dict())
    assert torch.equal(next(anchor.parameters()), next(diffusion.parameters()))
    with torch.no_grad():
        next(diffusion.parameters()).sub_(1.0)


def test_num_envs_can_change_between_episodes(diffusion):
    policy = LerobotDiffusionPolicy(diffusion.policy, diffusion.preprocessor, diffusion.postprocessor, num_envs=B)
    first = policy.generators[0].get_state()
    policy.num_envs = 3
    assert len(policy.generators) == 3 and torch.equal(policy.generators[0].get_state(), first)
    obs = {k: torch.cat([v, v[:1]]) if torch.is_tensor(v) else v + v[:1] for k, v in make_obs().items()}
    policy.reset(obs, {})
    assert policy.select_action_chunk(obs).shape == (3, 8, 7)
    policy.num_envs = 1
    assert len(policy.generators) == 1
    with pytest.raises(ValueError, match="num_envs must be a positive integer"):
        policy.num_envs = 0


def lerobot_batch(diffusion, obs: dict, actions: torch.Tensor, pad: torch.Tensor) -> dict:
    """A lerobot training batch by hand: one observation step, the action window, its padding."""
    batch = {k: v.unsqueeze(1) if k != keys.TASK else v for k, v in obs.items()}
    return diffusion.preprocessor(batch | {keys.ACTION: actions, "action_is_pad": pad})


def test_loss_is_lerobots_training_loss_of_the_chunks(diffusion):
    obs, actions = make_obs(), torch.rand(B, 8, 7) * 3 - 1  # env units
    diffusion.train()
    torch.manual_seed(5)
    expected = diffusion.policy.forward(lerobot_batch(diffusion, obs, actions, torch.zeros(B, 8, dtype=torch.bool)))[0]
    torch.manual_seed(5)
    loss = diffusion.loss(obs, actions)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert diffusion.policy.diffusion.unet.final_conv[1].weight.grad is not None
    diffusion.policy.zero_grad(set_to_none=True)

    # a generator gives the policy's randomness (noise, timesteps, crops) and leaves the global RNG alone
    state = torch.get_rng_state()
    with torch.no_grad():
        a, b = (diffusion.loss(obs, actions, None, torch.Generator().manual_seed(2)) for _ in range(2))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)

    # steps past an episode's end are lerobot's padding: copies of the last valid action
    mask = torch.ones(B, 8, dtype=torch.bool)
    mask[0, 5:] = False
    garbage, copied = actions.clone(), actions.clone()
    garbage[0, 5:] = 100.0
    copied[0, 5:] = actions[0, 4]
    with torch.no_grad():
        masked, unmasked, edge = (diffusion.loss(obs, x, m, torch.Generator().manual_seed(2))
                                  for x, m in ((garbage, mask), (garbage, None), (copied, None)))
    torch.testing.assert_close(masked, edge)
    assert not torch.allclose(unmasked, edge)
    diffusion.eval()
    with pytest.raises(ValueError, match=r"actions must be \(n, 8, 7\)"):
        diffusion.loss(obs, actions[:, :4])
