"""ImaginedEnv against PhysicsEnv: one contract, with tiny real (randomly initialised) models."""

from dataclasses import replace

import pytest
import torch

from eval.policy import run_episodes
from policy.scripted import ScriptedPolicy
from simulator import keys
from simulator.env import ImaginedEnv, ImaginedEnvConfig
from simulator.normalization import Normalizer
from simulator.physics import ExpertConfig
from simulator.progress import ProgressModel
from simulator.recording import EpisodeRecorder
from simulator.rollout import Rollout
from simulator.starts import StartFrames
from simulator.world_model import WorldModel

VIEWS, SIZE, B, H = ("front", "wrist"), 32, 2, 8
SHARED_INFO = ("success", "success_prob", "progress", "frames_valid", "states", "steps", "success_step")


def tiny_models(seed: int = 0):
    torch.manual_seed(seed)
    wm = WorldModel(views=2, image_size=SIZE, context=2, horizon=H, block_out_channels=(32, 32), cond_dim=32,
                    scale_noisy_input=True)
    with torch.no_grad():  # its delta and state heads start at zero (copy-last): make it move, and vary with the noise
        for p in wm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pm = ProgressModel(views=VIEWS, image_size=SIZE, channels=(8, 8), norm_num_groups=4, width=32, head_width=16,
                       ensemble=3)
    return wm, pm


def unit_normalizer() -> Normalizer:
    return Normalizer({keys.ACTION: {"mean": [0.0] * 7, "std": [1.0] * 7},
                       keys.STATE: {"mean": [0.0] * 8, "std": [1.0] * 8}})


def imagined_env(starts, **config) -> ImaginedEnv:
    wm, pm = tiny_models()
    return ImaginedEnv(wm, pm, starts, unit_normalizer(), VIEWS, ImaginedEnvConfig(**{"num_envs": B, "max_steps": 16, **config}))


def sure(env: ImaginedEnv, success: bool) -> ImaginedEnv:
    """The env's progress model made sure of success or of failure (its success heads' bias set), so
    that no outcome rests on where a random model's success probability falls (near 0.5)."""
    for head in env.progress_model.heads:
        head[-1].bias.data[1] = 20.0 if success else -20.0
    return env


def same_structure(a, b, where: str) -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype, (where, a.shape, a.dtype, b)
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            same_structure(a[k], b[k], f"{where}[{k}]")
    else:
        assert type(a) is type(b) and len(a) == len(b), where


def test_the_contract_is_the_physics_envs(physics, starts):
    env = imagined_env(starts)
    actions = torch.zeros(B, H, 7)
    actions[:, :, 2] = 0.5
    physical, imagined = physics.reset(seed=1000), env.reset(seed=0)
    ground_truth = (keys.ENV_STATE, keys.previous_key(keys.ENV_STATE))  # physics obs only, never imagined
    same_structure({k: v for k, v in physical[0].items() if k not in ground_truth}, imagined[0], "reset obs")
    # the start is the physics start, pixel for pixel
    for v in VIEWS:
        assert torch.equal(imagined[0][keys.image_key(v)], (physical[0][keys.image_key(v)] * 255).round() / 255)
    assert torch.allclose(imagined[1]["object_state"], physical[1]["object_state"])
    p_step, i_step = physics.step(actions), env.step(actions)
    same_structure({k: v for k, v in p_step[0].items() if k not in ground_truth}, i_step[0], "obs")
    for name, p, i in zip(("reward", "terminated", "truncated"), p_step[1:4], i_step[1:4]):
        same_structure(p, i, name)
    same_structure({k: p_step[4][k] for k in SHARED_INFO}, {k: i_step[4][k] for k in SHARED_INFO}, "info")
    same_structure(p_step[4]["frames"], i_step[4]["frames"], "info frames")
    assert i_step[4]["frames"]["front"].shape == (B, H, 3, SIZE, SIZE)
    assert i_step[4]["steps"].tolist() == [H, H]
    assert i_step[0][keys.TASK] == physical[0][keys.TASK]


def test_a_lerobot_policy_reads_both_unchanged(physics, starts):
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    torch.manual_seed(0)
    features = {keys.image_key(v): PolicyFeature(FeatureType.VISUAL, (3, SIZE, SIZE)) for v in VIEWS}
    features[keys.STATE] = PolicyFeature(FeatureType.STATE, (8,))
    config = DiffusionConfig(input_features=features, output_features={keys.ACTION: PolicyFeature(FeatureType.ACTION, (7,))},
                             n_obs_steps=1, horizon=H, n_action_steps=H, drop_n_last_frames=0, down_dims=(16, 32),
                             pretrained_backbone_weights=None, use_group_norm=True, spatial_softmax_num_keypoints=4,
                             num_inference_steps=2, device="cpu")
    policy = DiffusionPolicy(config).eval()
    env = imagined_env(starts)
    for sim, seed in ((physics, 1000), (env, 0)):
        obs, _ = sim.reset(seed=seed)
        policy.reset()
        batch = {k: obs[k] for k in features}
        # lerobot's online path: one inference fills its queue with n_action_steps = H actions
        chunk = torch.stack([policy.select_action(batch) for _ in range(H)], 1)
        assert chunk.shape == (B, H, 7)
        obs, reward, *_ = sim.step(chunk.clamp(-1, 1))
        assert reward.shape == (B,)


def test_partial_reset_and_seeding(starts):
    env = sure(imagined_env(starts, sampling_steps=2), success=False)
    actions = torch.randn(B, H, 7, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    obs, info = env.reset(seed=5)
    assert info["seeds"] == {0: 5, 1: 6}
    first = env.step(actions)
    obs, info = env.reset(options={"reset_mask": torch.tensor([True, False])})
    assert info["seeds"] == {0: 7}  # the counter goes on
    assert info["steps"].tolist() == [0, H]
    # env 0 is back at start 7 % 2 = 1, env 1 keeps its imagined frame
    assert torch.equal(obs[keys.image_key("front")][0], starts.frames[1, 0].float() / 255)
    assert torch.equal(obs[keys.image_key("front")][1], first[0][keys.image_key("front")][1])
    # the same seed replays the same imagined episode, sampling noise included
    env.reset(seed=5)
    again = env.step(actions)
    assert torch.equal(again[4]["frames"]["wrist"], first[4]["frames"]["wrist"])
    env.reset(seed=6)
    assert not torch.equal(env.step(actions)[4]["frames"]["wrist"], first[4]["frames"]["wrist"])


def test_reward_is_the_progress_gain_and_success_terminates(starts):
    env = sure(imagined_env(starts, gamma=0.9, success_bonus=2.0), success=False)
    _, info = env.reset(seed=0)
    _, reward, terminated, truncated, after = env.step(torch.zeros(B, H, 7))
    assert torch.allclose(reward, 0.9 * after["progress"] - info["progress"])
    assert not terminated.any() and not truncated.any()
    sure(env, success=True)  # the episode ends solved
    _, info = env.reset(seed=0)
    _, reward, terminated, truncated, after = env.step(torch.zeros(B, H, 7))
    assert terminated.all() and not truncated.any() and after["success"].all()
    assert torch.allclose(reward, 0.9 * after["progress"] - info["progress"] + 2.0)
    # the episode ends at its first solved frame, as physics ends at the step of its success
    assert after["steps"].tolist() == [1, 1] and after["frames_valid"].tolist() == [[True] + [False] * (H - 1)] * B
    assert after["success_step"].tolist() == [1, 1]
    # finished envs stay finished: no reward, no new frames
    obs_before = env._observation()
    _, reward, terminated, truncated, info = env.step(torch.ones(B, H, 7))
    assert (reward == 0).all() and not terminated.any() and not info["frames_valid"].any()
    assert torch.equal(env._observation()[keys.STATE], obs_before[keys.STATE])


def test_the_outcome_does_not_read_the_physics_object_state(starts):
    """The rule of the simulator: the start's ground-truth object state is handed to the policy (reset
    info, for scripted experts) but never decides an imagined outcome. Moved 10 cm and turned, with
    a grasp commanded where a rule reading it would refute success, nothing the env returns changes."""
    grasp = torch.zeros(B, 2 * H, 7)
    grasp[:, :, -1] = -1.0
    grasp[:, 4:, -1] = 1.0  # the gripper closes at step 4
    moved = replace(starts, object_state=starts.object_state + torch.tensor([0.1, -0.1, 0.05, 0.5, 0.5, 0.0, 0.0] + [0.0] * 7))
    runs = []
    for s in (starts, moved):
        env = sure(imagined_env(s), success=True)
        _, reset_info = env.reset(seed=0)
        runs.append((reset_info, env.step(grasp), env.step(grasp)))
    (info_a, *steps_a), (info_b, *steps_b) = runs
    assert not torch.equal(info_a["object_state"], info_b["object_state"])  # the policy's privilege
    assert steps_a[0][2].all()  # solved: a rule that read the object state would have something to refute
    for (obs_a, *out_a, step_info_a), (obs_b, *out_b, step_info_b) in zip(steps_a, steps_b):
        for a, b in zip(out_a, out_b):  # reward, terminated, truncated
            assert torch.equal(a, b)
        for key in (*SHARED_INFO, "frames"):
            same_structure(step_info_a[key], step_info_b[key], key)
            assert all(torch.equal(x, y) for x, y in zip(*(
                [v] if torch.is_tensor(v) else list(v.values()) for v in (step_info_a[key], step_info_b[key])))), key
        assert all(torch.equal(obs_a[k], obs_b[k]) for k in obs_a if torch.is_tensor(obs_a[k]))


def test_success_step_stays_at_the_first_success_when_episodes_go_on(starts):
    """Without termination at success the episode runs on to the horizon; ``success_step`` keeps the
    step of its first solved frame (1: the first frame), and is 0 while nothing is solved."""
    env = sure(imagined_env(starts, terminate_on_success=False), success=False)
    env.reset(seed=0)
    *_, info = env.step(torch.zeros(B, H, 7))
    assert info["success_step"].tolist() == [0, 0]
    sure(env, success=True)
    *_, info = env.step(torch.zeros(B, H, 7))
    assert info["success"].all() and info["success_step"].tolist() == [H + 1, H + 1] and info["steps"].tolist() == [2 * H] * B
    _, info = env.reset(seed=0)  # a new episode starts with none
    assert info["success_step"].tolist() == [0, 0]


def test_truncation_at_the_horizon(starts):
    env = sure(imagined_env(starts), success=False)
    env.reset(seed=0)
    _, _, _, truncated, _ = env.step(torch.zeros(B, H, 7))
    assert not truncated.any()
    _, _, terminated, truncated, info = env.step(torch.zeros(B, H, 7))
    assert truncated.all() and not terminated.any() and info["steps"].tolist() == [16, 16]


def test_bad_input_gets_a_clear_error(starts, tmp_path):
    env = imagined_env(starts)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(torch.zeros(B, H, 7))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="A=7"):
        env.step(torch.zeros(B, H, 6))
    with pytest.raises(ValueError, match="multiple of 8"):
        env.step(torch.zeros(B, 5, 7))
    wm, pm = tiny_models()
    with pytest.raises(ValueError, match="views"):
        ImaginedEnv(wm, pm, starts, unit_normalizer(), ("front",))
    with pytest.raises(ValueError, match="sampling_steps must be >= 1"):
        ImaginedEnvConfig(sampling_steps=0)
    wm.save_pretrained(tmp_path / "wm")
    with pytest.raises(ValueError, match="WorldModel checkpoint, not a ProgressModel"):
        ImaginedEnv.from_pretrained(tmp_path / "wm", tmp_path / "wm", starts, VIEWS)


def test_the_one_episode_loop_runs_until_every_episode_ended(starts):
    """simulator.rollout: one step per chunk until every episode ended, each step handing the
    observation its actions were chosen from; nothing is stepped after the end or after a break."""
    seen = []

    def act(obs):
        seen.append(obs[keys.STATE].clone())
        return torch.zeros(B, H, 7)

    failing = sure(imagined_env(starts), success=False)  # max_steps 16 = 2 chunks, then truncated
    rollout = Rollout(failing, seed=0)
    first_state = rollout.obs[keys.STATE].clone()
    steps = list(rollout.run(act))
    assert len(steps) == len(seen) == 2 and rollout.done.all() and not rollout.solved.any()
    assert torch.equal(seen[0], first_state) and torch.equal(steps[1].obs[keys.STATE], steps[0].info["states"][:, -1])
    assert all(s.alive.all() for s in steps) and steps[-1].truncated.all()
    solving = sure(imagined_env(starts), success=True)
    rollout = Rollout(solving, seed=0)
    steps = list(rollout.run(act))
    assert len(steps) == 1 and rollout.solved.all() and steps[0].terminated.all()
    rollout = Rollout(failing, seed=0)
    for _ in rollout.run(act):
        break  # a caller leaving early: the env stopped where it left
    assert rollout.info["steps"].tolist() == [H, H] and not rollout.done.any()


def test_scripted_policies_run_in_both(physics, starts, tmp_path):
    """The same scripted expert, seeded alike, runs whole episodes in both simulators."""
    env = imagined_env(starts)
    policy = ScriptedPolicy("lift", ExpertConfig(), num_envs=B)
    for sim, seed in ((physics, 1000), (env, 0)):
        result = run_episodes(sim, policy, episodes=3, seed=seed)
        assert len(result.success) == 3 and all(0 < s <= 16 for s in result.steps)
    recorder = EpisodeRecorder(tmp_path / "rec", views=VIEWS, video_dir=tmp_path / "mp4")
    again = run_episodes(env, policy, episodes=3, seed=0, recorder=recorder)
    assert again == replace(result, seconds=again.seconds)  # recording changes nothing; seeded alike
    recorder.close()
    lengths = [e["length"] for e in recorder.episodes]
    assert len(lengths) == 4 and lengths[:3] == result.steps  # 2 rounds of 2 envs: the last env's too
    obs, info = physics.reset(seed=1000)
    policy.reset(obs, info, seeds=[0, 1])
    chunk = policy.select_action_chunk(obs)
    assert chunk.shape == (B, H, 7) and chunk.dtype == torch.float32
    assert (chunk[:, :, 6] == -1).all()  # approaching with the gripper open
    with pytest.raises(ValueError, match="actions must be an action chunk"):
        physics.step(chunk[:, :, :6])


def test_imagined_episodes_are_recorded_as_a_lerobot_dataset_and_mp4(starts, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from simulator.recording import EpisodeRecorder

    env = imagined_env(starts)
    recorder = EpisodeRecorder(tmp_path / "imagined", views=VIEWS, fps=20, video_dir=tmp_path / "mp4")
    obs, info = env.reset(seed=0)
    recorder.start(obs, info)
    actions = torch.rand(2, B, H, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for chunk in actions:
        recorder.step(chunk, *env.step(chunk)[1:])
    root = recorder.close()
    dataset = LeRobotDataset("reverie/imagined", root=root)
    assert dataset.meta.total_episodes == B and dataset.meta.total_frames == B * 16
    recorded = torch.stack([dataset.hf_dataset[i]["action"] for i in range(16)])
    assert torch.equal(recorded, actions[:, 0].reshape(16, 7))  # env 0's episode, as sent
    assert len(list((tmp_path / "mp4").glob("*.mp4"))) == B


def test_starts_from_dataset_episodes_and_keyframes(tiny_dataset):
    from data.clips import ClipDataset

    clips = ClipDataset(root=tiny_dataset, episodes=[0, 1])
    starts = StartFrames.from_dataset(clips, every=20, history=4)
    lengths = [end - first for first, end in map(clips.episode_range, (0, 1))]
    times = [(ep, t) for ep, n in zip((0, 1), lengths) for t in range(0, n, 20)]
    assert len(starts) == len(times) and starts.history.shape[2] == 4
    ep, t = times[1]  # a keyframe inside episode 0
    assert torch.equal(starts.frames[1], clips.decode(ep, [t])[:, 0])
    assert torch.equal(starts.history[1], clips.decode(ep, [t - 4, t - 3, t - 2, t - 1]))
    assert torch.equal(starts.first_frames[1], clips.decode(ep, [0])[:, 0])
    assert torch.equal(starts.state[1], clips.columns[keys.STATE][t])
    # an imagined env starts there: the start frame is its observation, the history its context
    env = imagined_env(starts)
    obs, info = env.reset(seed=1)
    assert torch.equal(obs[keys.image_key("wrist")][0], starts.frames[1, 1].float() / 255)
    assert torch.equal(env._frames[0, :, -5:-1], starts.history[1])
    assert torch.allclose(info["object_state"][0], clips.columns[keys.ENV_STATE][t])


def test_outputs_carry_no_autograd_graph(starts):
    env = imagined_env(starts)
    _, info = env.reset(seed=0)
    out = env.step(torch.zeros(B, H, 7))
    assert not any(t.requires_grad for t in (info["progress"], info["success_prob"], out[1], out[4]["progress"],
                                             out[0][keys.STATE]))


# ---- what physics refuses or clips, imagination refuses or clips alike (issue 19) ------------------------
def synthetic_env(**config) -> ImaginedEnv:
    """An imagined env of tiny models from random start frames: no physics needed."""
    from tests.conftest import moving_world_model

    frames = torch.randint(0, 256, (B, len(VIEWS), 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    starts = StartFrames(frames=frames, first_frames=frames.clone(), state=torch.zeros(B, 8),
                         object_state=torch.zeros(B, 10), task=["lift"] * B)
    _, pm = tiny_models()
    return ImaginedEnv(moving_world_model(SIZE, horizon=H), pm, starts, unit_normalizer(), VIEWS,
                       ImaginedEnvConfig(**{"num_envs": B, "max_steps": 16, **config}))


def test_actions_outside_the_action_space_act_as_physics_acts_them():
    """robosuite's OSC controller clips the arm's six dims to [-1, 1] and the gripper follows only the
    sign of its command: an x-action of 5 is an x-action of 1 there, and must be one here too."""
    env = synthetic_env()

    def imagine(actions):
        env.reset(seed=0)
        _, reward, _, _, info = env.step(actions)
        return info["frames"], info["states"], reward

    chunk = torch.zeros(B, H, 7)
    chunk[..., 0], chunk[..., 3], chunk[..., 6] = 1.0, -1.0, 1.0
    wild = chunk.clone()
    wild[..., 0], wild[..., 3], wild[..., 6] = 5.0, -40.0, 0.3
    a, b = imagine(chunk), imagine(wild)
    for view in VIEWS:
        assert torch.equal(a[0][view], b[0][view])
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    inside = chunk.clone()
    inside[..., 0] = -1.0  # the imagination does follow actions inside the space
    assert not torch.equal(a[1], imagine(inside)[1])


def test_non_finite_imagination_is_an_error_naming_the_env_and_step():
    env = synthetic_env()
    env.reset(seed=0, options={"reset_mask": torch.tensor([False, True])})  # env 0 never started: only env 1 runs
    env.step(torch.zeros(B, H, 7))
    with torch.no_grad():
        env.world_model.unet.conv_out.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite frames for env 1 at step 8"):
        env.step(torch.zeros(B, H, 7))
    env = synthetic_env()
    env.reset(seed=0)
    with torch.no_grad():
        env.world_model.state_head[-1].bias[2] = float("inf")
    with pytest.raises(FloatingPointError, match="non-finite states for env 0 at step 0"):
        env.step(torch.zeros(B, H, 7))


def test_non_finite_or_empty_action_chunks_are_refused():
    env = synthetic_env()
    env.reset(seed=0)
    actions = torch.zeros(B, H, 7)
    actions[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"actions must be finite, got nan at \(env, step, dim\) = \(1, 3, 0\)"):
        env.step(actions)
    with pytest.raises(ValueError, match="multiple of 8"):
        env.step(torch.zeros(B, 0, 7))
    obs, *_ = env.step(torch.zeros(B, H, 7, dtype=torch.float64))  # float64 is cast, as physics takes it
    assert obs[keys.STATE].dtype == torch.float32


def test_an_episode_whose_imagined_state_leaves_the_datas_range_is_flagged_and_a_reset_clears_it(starts):
    """The flag follows the imagined states against the dataset's range (widened by OUTSIDE_MARGIN
    of it); statistics without min and max give no flag at all."""
    actions = torch.zeros(B, H, 7)
    actions[:, :, 2] = -1.0  # straight down
    env = imagined_env(starts)
    assert "outside_data" not in env.reset(seed=0)[1]  # the unit normalizer has no min and max
    states = env.step(actions)[4]["states"]  # (B, H, S): where this model takes the state

    def with_range(lo, hi) -> ImaginedEnv:
        stats = unit_normalizer().stats
        stats[keys.STATE] |= {"min": lo.tolist(), "max": hi.tolist()}
        wm, pm = tiny_models()
        return ImaginedEnv(wm, pm, starts, Normalizer(stats), VIEWS, ImaginedEnvConfig(num_envs=B, max_steps=16))

    last = states[0, -1]
    narrow, wide = with_range(last, last), with_range(states.amin((0, 1)) - 1, states.amax((0, 1)) + 1)
    for env, outside in ((narrow, True), (wide, False)):
        assert env.reset(seed=0)[1]["outside_data"].tolist() == [False, False]
        assert env.step(actions)[4]["outside_data"].tolist() == [outside, outside]
        _, info = env.reset(seed=0, options={"reset_mask": torch.tensor([True, False])})
        assert info["outside_data"].tolist() == [False, outside]
