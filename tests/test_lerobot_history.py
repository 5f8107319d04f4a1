"""A lerobot Diffusion Policy as lerobot-train makes it by default (two observation steps, one env
step apart, and the dataset's ground-truth object state as an input when it records one) in both
envs: tiny real policies, a tiny physics env and a tiny imagined env built on its starts."""

import re

import pytest
import torch

from eval.policy import run_episodes
from policy.lerobot_adapter import LerobotPolicy, cpu_diffusion_config, policy_features
from simulator import keys
from simulator.env import ImaginedEnv, ImaginedEnvConfig
from simulator.normalization import Normalizer
from simulator.progress import ProgressModel
from tests.conftest import moving_world_model
from train.rl.base import collect

VIEWS, SIZE, B, H = ("front", "wrist"), 32, 2, 8
SEEDS = [7, 8]
PREV = keys.previous_key

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def imagined(starts, future: int = H) -> ImaginedEnv:
    """A tiny imagined env on the physics starts; ``future`` < H imagines a frame every H/future steps."""
    wm = moving_world_model(SIZE, horizon=H, future=future)
    pm = ProgressModel(views=VIEWS, image_size=SIZE, channels=(8, 8), norm_num_groups=4, width=32,
                       head_width=16, ensemble=3)
    norm = Normalizer({keys.ACTION: {"mean": [0.0] * 7, "std": [1.0] * 7},
                       keys.STATE: {"mean": [0.0] * 8, "std": [1.0] * 8}})
    return ImaginedEnv(wm, pm, starts, norm, VIEWS, ImaginedEnvConfig(num_envs=B, max_steps=16))


def two_step_policy(env_state_dim: int = 0, n_obs_steps: int = 2) -> LerobotPolicy:
    """A tiny lerobot Diffusion Policy with n_obs_steps 2 (and the object state as an input when
    ``env_state_dim``), as lerobot-train builds from a dataset that records it."""
    from lerobot.configs import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    inputs, _ = policy_features(VIEWS, SIZE)
    stats = {keys.ACTION: {"min": -torch.ones(7), "max": torch.ones(7)},
             keys.STATE: {"min": -torch.ones(8), "max": torch.ones(8)}}
    if env_state_dim:
        inputs[keys.ENV_STATE] = PolicyFeature(FeatureType.ENV, (env_state_dim,))
        stats[keys.ENV_STATE] = {"min": -torch.ones(env_state_dim), "max": torch.ones(env_state_dim)}
    torch.manual_seed(0)
    config = cpu_diffusion_config(VIEWS, SIZE, chunk_size=H, n_obs_steps=n_obs_steps, input_features=inputs,
                                  device="cpu", down_dims=(16, 32), diffusion_step_embed_dim=16,
                                  spatial_softmax_num_keypoints=4, num_inference_steps=4)
    return LerobotPolicy.wrap(DiffusionPolicy(config), num_envs=B, dataset_stats=stats, rl_steps=2).eval()


@pytest.fixture(scope="module")
def policy():
    return two_step_policy()


def as_obs(frames: dict, states: torch.Tensor, t: int, task: list[str]) -> dict:
    """The observation after step t of a chunk, from the env's per-step info."""
    obs = {keys.image_key(v): frames[v][:, t].float() / 255.0 for v in VIEWS}
    return obs | {keys.STATE: states[:, t], keys.TASK: task}


@pytest.mark.parametrize("sim", ["physics", "imagined"])
def test_both_envs_give_the_step_before(sim, physics, starts):
    env = physics if sim == "physics" else imagined(starts)
    obs, _ = env.reset(seed=1000 if sim == "physics" else 0)
    for key in (*[keys.image_key(v) for v in VIEWS], keys.STATE):  # at reset: the current one repeated
        assert torch.equal(obs[PREV(key)], obs[key])
    actions = torch.zeros(B, H, 7)
    actions[:, :, 2], actions[:, ::2, 0] = 0.5, 0.8  # up, and a sway that changes every step
    obs, *_, info = env.step(actions)
    assert info["frames_valid"].all()
    last, before = as_obs(info["frames"], info["states"], -1, obs[keys.TASK]), as_obs(
        info["frames"], info["states"], -2, obs[keys.TASK])
    for key in (*[keys.image_key(v) for v in VIEWS], keys.STATE):
        torch.testing.assert_close(obs[key], last[key])
        torch.testing.assert_close(obs[PREV(key)], before[key])
    assert not torch.equal(obs[PREV(keys.STATE)], obs[keys.STATE])
    # the ground-truth object state is in the physics obs only
    assert (keys.ENV_STATE in obs and PREV(keys.ENV_STATE) in obs) == (sim == "physics")
    if sim == "imagined":  # a partial reset starts that env's history afresh
        obs, _ = env.reset(options={"reset_mask": torch.tensor([True, False])})
        assert torch.equal(obs[PREV(keys.STATE)][0], obs[keys.STATE][0])
        assert not torch.equal(obs[PREV(keys.STATE)][1], obs[keys.STATE][1])


def test_a_two_step_policy_runs_episodes_in_both_envs(policy, physics, starts):
    for env in (physics, imagined(starts)):
        results = run_episodes(env, policy, episodes=B, seed=1000 if env is physics else 0)
        assert len(results.success) == B and all(0 < s <= 16 for s in results.steps)


def lerobot_queue_chunk(policy: LerobotPolicy, steps: list[dict]) -> torch.Tensor:
    """What lerobot's own online path acts on after seeing ``steps`` one after the other (its
    queues start with copies of the first), from the noise our policy draws after reset(SEEDS)."""
    from lerobot.policies.utils import populate_queues
    from lerobot.utils.constants import OBS_IMAGES

    model = policy.policy
    model.reset()
    for obs in steps:
        inputs = {k: obs[k] for k in model.config.input_features}
        batch = policy.preprocessor(inputs | {keys.TASK: obs[keys.TASK]})
        batch = {k: batch[k] for k in inputs}  # as lerobot's select_action: no action, no task
        batch[OBS_IMAGES] = torch.stack([batch[k] for k in model.config.image_features], dim=-4)
        model._queues = populate_queues(model._queues, batch)
    shape = (model.config.horizon, 7)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in SEEDS])
    with torch.no_grad():
        chunk = model.predict_action_chunk(batch, noise=noise)
    model.reset()
    return policy.postprocessor(chunk).float()


@pytest.mark.parametrize("sim", ["physics", "imagined"])
def test_the_history_is_the_last_two_env_steps(sim, policy, physics, starts):
    """At reset the policy sees the first frame twice; at a chunk boundary the last two per-step
    frames of the chunk, as lerobot's queues hold them after those two steps."""
    env = physics if sim == "physics" else imagined(starts)
    obs, info = env.reset(seed=1000 if sim == "physics" else 0)
    policy.reset(obs, info, seeds=SEEDS)
    torch.testing.assert_close(policy.select_action_chunk(obs), lerobot_queue_chunk(policy, [obs]))
    actions = torch.zeros(B, H, 7)
    actions[:, :, 2], actions[:, ::2, 0] = 0.5, 0.8
    obs, *_, info = env.step(actions)
    policy.reset(obs, info, seeds=SEEDS)  # the same noise again
    chunk = policy.select_action_chunk(obs)
    before, last = (as_obs(info["frames"], info["states"], t, obs[keys.TASK]) for t in (-2, -1))
    torch.testing.assert_close(chunk, lerobot_queue_chunk(policy, [before, last]))
    assert not torch.allclose(chunk, lerobot_queue_chunk(policy, [last]))  # the history matters


def test_rl_rescores_a_sample_under_the_history_it_acted_on(policy, starts):
    """GRPO/PPO collect with ``sample`` and re-score with ``log_prob`` from the stored rollouts."""
    env = imagined(starts)
    rollouts = collect(env, policy, VIEWS, torch.zeros(B, dtype=torch.long), seed=0,
                       generator=torch.Generator().manual_seed(0))
    T = rollouts.images.shape[0]
    assert T == 2 and rollouts.previous_images is not None
    t, b = torch.arange(T).repeat_interleave(B), torch.arange(B).repeat(T)  # t-major, as the samples
    obs = rollouts.observation(t, b, VIEWS)
    with torch.no_grad():
        stored = rollouts.samples.log_probs
        torch.testing.assert_close(policy.log_prob(obs, rollouts.samples), stored, atol=1e-4, rtol=1e-4)
        no_history = obs | {PREV(k): obs[k] for k in (*[keys.image_key(v) for v in VIEWS], keys.STATE)}
        later = t > 0  # at t = 0 the step before is the current one
        rescored = policy.log_prob(no_history, rollouts.samples)
        assert not torch.allclose(rescored[later], stored[later], atol=1e-4, rtol=1e-4)
    # a policy that reads one step: the env still gives the step before, the rollouts do not keep it
    one_step = collect(env, two_step_policy(n_obs_steps=1), VIEWS, torch.zeros(B, dtype=torch.long), seed=0,
                       generator=torch.Generator().manual_seed(0))
    assert one_step.previous_images is None and one_step.previous_state is None


def test_an_env_state_policy_runs_in_physics_and_is_refused_in_imagination(physics, starts):
    import draccus
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    dim = int(physics.reset(seed=1000)[1]["object_state"].shape[1])
    policy = two_step_policy(env_state_dim=dim)
    results = run_episodes(physics, policy, episodes=B, seed=1000)
    assert all(0 < s <= 16 for s in results.steps)
    env = imagined(starts)
    obs, info = env.reset(seed=0)
    noise_before = [g.get_state() for g in policy.generators]
    for call in (lambda: policy.reset(obs, info, seeds=SEEDS), lambda: policy.select_action_chunk(obs),
                 lambda: policy.sample(obs)):
        with pytest.raises(ValueError, match="observation.environment_state.*imagined env never gives") as e:
            call()
        assert "--operation.type remove_feature --operation.feature_names" in str(e.value)
    # nothing was sampled
    assert all(torch.equal(g.get_state(), s) for g, s in zip(policy.generators, noise_before))
    # the lerobot-train flag the error quotes sets the inputs without the object state
    flag = re.search(r"--policy\.input_features='(\{.*?\})'", str(e.value)).group(1)
    parsed = draccus.parse(DiffusionConfig, args=["--input_features", flag]).input_features
    assert parsed == {k: f for k, f in policy.config.input_features.items() if k != keys.ENV_STATE}


def test_without_frames_one_step_apart_a_two_step_policy_is_refused(policy, starts):
    env = imagined(starts, future=H // 2)  # a frame every second env step: none one step before
    obs, info = env.reset(seed=0)
    assert PREV(keys.STATE) not in obs
    with pytest.raises(KeyError, match="previous.observation.state.*frame stride 1"):
        policy.reset(obs, info, seeds=SEEDS)
