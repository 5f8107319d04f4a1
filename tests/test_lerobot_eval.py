"""``lerobot-eval --env.type=reverie``: a tiny lerobot diffusion policy evaluated in imagination by
lerobot's own evaluation script, and the per-step env against the chunked imagined env it wraps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from simulator import keys
from simulator.env import NORMALIZATION_FILE, ImaginedEnv, ImaginedEnvConfig
from simulator.lerobot_env import (
    ImaginedVectorEnv,
    ReverieEnvConfig,
    StartPool,
    check_policy,
    dataset_starts,
)
from simulator.normalization import Normalizer
from simulator.progress import ProgressModel
from simulator.starts import StartFrames
from tests.conftest import moving_world_model

VIEWS, SIZE, H, B = ("front", "wrist"), 32, 8, 2
UNIT = {keys.ACTION: {"mean": [0.0] * 7, "std": [1.0] * 7}, keys.STATE: {"mean": [0.0] * 8, "std": [1.0] * 8}}
POLICY_STATS = {keys.ACTION: {"min": -torch.ones(7), "max": torch.ones(7)},
                keys.STATE: {"min": -torch.ones(8), "max": torch.ones(8)}}

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def sure_progress(success: bool) -> ProgressModel:
    """A tiny progress model made sure of success or of failure (its success heads' bias), so that
    no outcome rests on where a random model's success probability falls."""
    torch.manual_seed(0)
    pm = ProgressModel(views=VIEWS, image_size=SIZE, channels=(8, 8), norm_num_groups=4, width=32, head_width=16,
                       ensemble=3)
    for head in pm.heads:
        head[-1].bias.data[1] = 20.0 if success else -20.0
    return pm


def random_starts(n: int) -> StartFrames:
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (n, len(VIEWS), 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return StartFrames(frames=frames, first_frames=frames.clone(), state=torch.randn(n, 8, generator=g),
                       object_state=torch.zeros(n, 10), task=[f"task {i}" for i in range(n)])


def tiny_diffusion_policy(folder: Path, n_obs_steps: int = 1) -> None:
    """A random lerobot diffusion policy re-planning every world-model chunk, saved with its processors."""
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.factory import make_pre_post_processors

    from policy.lerobot_adapter import cpu_diffusion_config

    torch.manual_seed(0)
    config = cpu_diffusion_config(views=VIEWS, image_size=SIZE, chunk_size=H, device="cpu", down_dims=(16, 32),
                                  diffusion_step_embed_dim=16, num_inference_steps=2, n_obs_steps=n_obs_steps)
    policy = DiffusionPolicy(config)
    policy.save_pretrained(folder)
    for processor in make_pre_post_processors(config, dataset_stats=POLICY_STATS):
        processor.save_pretrained(folder)


@pytest.mark.timeout(240)
def test_lerobot_eval_reports_the_imagined_success_of_a_lerobot_policy(tmp_path):
    moving_world_model(SIZE, horizon=H).save_pretrained(tmp_path / "wm")
    (tmp_path / "wm" / NORMALIZATION_FILE).write_text(json.dumps(UNIT))
    sure_progress(success=True).save_pretrained(tmp_path / "pm")
    tiny_diffusion_policy(tmp_path / "policy", n_obs_steps=2)  # lerobot's default: the step before is peeked
    argv = [str(Path(sys.executable).parent / "lerobot-eval"), f"--policy.path={tmp_path / 'policy'}",
            "--env.type=reverie", f"--env.world_model={tmp_path / 'wm'}", f"--env.progress={tmp_path / 'pm'}",
            "--env.imagined.max_steps=16", "--eval.n_episodes=2", "--eval.batch_size=2", "--seed=3",
            f"--output_dir={tmp_path / 'eval'}"]
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(argv, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=230)
    assert run.returncode == 0, run.stderr[-4000:]
    info = json.loads((tmp_path / "eval" / "eval_info.json").read_text())
    overall, (task,) = info["overall"], info["per_task"]
    # the sure progress model solves every episode in the first chunk: 100 %, its reward in one step
    assert overall["n_episodes"] == 2 and overall["pc_success"] == 100.0 and task["metrics"]["successes"] == [True] * 2
    assert task["metrics"]["sum_rewards"] == task["metrics"]["max_rewards"] and len(task["metrics"]["video_paths"]) == 2


@pytest.mark.parametrize("success", [True, False])
def test_the_per_step_env_steps_the_imagined_env_once_per_chunk(success):
    """Mid-chunk steps return the last observation and nothing else; the chunk's last step returns
    what the chunked env returns for the whole chunk, so the per-step rewards add up to its."""
    world_model, progress, normalizer = moving_world_model(SIZE, horizon=H), sure_progress(success), Normalizer(UNIT)
    config, starts = ImaginedEnvConfig(num_envs=B, max_steps=12), random_starts(3)
    per_step = ImaginedVectorEnv(world_model, progress, normalizer, VIEWS, StartPool(starts), config)
    chunked = ImaginedEnv(world_model, progress, starts.take([1, 2]), normalizer, VIEWS, config)
    obs, info = per_step.reset(seed=4)  # seeds 4, 5: starts 4 mod 3 and 5 mod 3
    chunked_obs, _ = chunked.reset(seed=4, options={"start_index": [0, 1]})
    assert info["seeds"].tolist() == [4, 5] and per_step.call("task") == ("task 1", "task 2")
    assert per_step.call("_max_episode_steps") == (16, 16)  # max_steps 12 rounded up to whole chunks
    actions = torch.rand(B, 16, 7, generator=torch.Generator().manual_seed(1)) * 2 - 1
    rewards, chunk_rewards = [], []
    for t in range(16):
        before = obs
        obs, reward, terminated, truncated, info = per_step.step(actions[:, t].numpy())
        rewards.append(reward)
        if (t + 1) % H:
            assert not reward.any() and not terminated.any() and not truncated.any()
            assert all(np.array_equal(obs["pixels"][v], before["pixels"][v]) for v in VIEWS)
            continue
        chunked_obs, c_reward, c_terminated, c_truncated, c_info = chunked.step(actions[:, t + 1 - H:t + 1])
        chunk_rewards.append(c_reward)
        torch.testing.assert_close(torch.from_numpy(reward), c_reward)
        assert terminated.tolist() == c_terminated.tolist() and truncated.tolist() == c_truncated.tolist()
        assert info["is_success"].tolist() == c_info["success"].tolist() == [success] * B
        for v in VIEWS:
            expected = (chunked_obs[keys.image_key(v)] * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
            assert np.array_equal(obs["pixels"][v], expected.numpy())
        np.testing.assert_allclose(obs["agent_pos"], chunked_obs[keys.STATE].numpy())
    torch.testing.assert_close(torch.from_numpy(np.sum(rewards, 0)), torch.stack(chunk_rewards).sum(0))
    # the imagined count: solved at the first chunk's first frame, or truncated after 2 chunks (max_steps 12)
    assert info["episode_steps"].tolist() == ([1] * B if success else [16] * B)
    assert per_step.render()[0].shape == (SIZE, 2 * SIZE, 3)


def test_a_two_step_history_sees_the_frame_before_the_chunks_last():
    """With history 2, the step before a chunk's last returns the frame and state after its action,
    peeked with the last action held: when the policy's last action is the held one, exactly what the
    chunk then imagines there. The peek leaves the env and its noise as they were: at chunk boundaries
    history 2 and history 1 observe the same; history 1 stays on the last boundary's observation."""
    world_model, progress, normalizer = moving_world_model(SIZE, horizon=H), sure_progress(False), Normalizer(UNIT)
    config, starts = ImaginedEnvConfig(num_envs=B, max_steps=16), random_starts(B)
    envs = {n: ImaginedVectorEnv(world_model, progress, normalizer, VIEWS, StartPool(starts), config, history=n)
            for n in (1, 2)}
    chunked = ImaginedEnv(world_model, progress, starts, normalizer, VIEWS, config)
    obs = {n: env.reset(seed=0)[0] for n, env in envs.items()}
    chunked.reset(seed=0, options={"start_index": [0, 1]})
    actions = torch.rand(B, 2 * H, 7, generator=torch.Generator().manual_seed(1)) * 2 - 1
    actions[:, H - 1] = actions[:, H - 2]  # the first chunk ends on a held action
    pixels = lambda o: np.stack([o["pixels"][v] for v in VIEWS], 1)  # noqa: E731  (B, V, h, w, 3)
    _, _, _, _, first = chunked.step(actions[:, :H])
    imagined = torch.stack([first["frames"][v] for v in VIEWS], 1).permute(0, 1, 2, 4, 5, 3).numpy()  # (B, V, H, ...)
    for t in range(2 * H):
        before = {n: pixels(o) for n, o in obs.items()}
        obs = {n: env.step(actions[:, t].numpy())[0] for n, env in envs.items()}
        if t % H == H - 2:
            assert not np.array_equal(pixels(obs[2]), before[2])
            assert np.array_equal(pixels(obs[1]), before[1])
            if t == H - 2:
                assert np.array_equal(pixels(obs[2]), imagined[:, :, H - 2])
                np.testing.assert_allclose(obs[2]["agent_pos"], first["states"][:, H - 2].numpy())
        elif t % H == H - 1:
            assert np.array_equal(pixels(obs[2]), pixels(obs[1]))
            np.testing.assert_array_equal(obs[2]["agent_pos"], obs[1]["agent_pos"])
        else:
            assert np.array_equal(pixels(obs[2]), before[2]) and np.array_equal(pixels(obs[1]), before[1])
    with pytest.raises(ValueError, match="imagines every env step"):
        ImaginedVectorEnv(moving_world_model(SIZE, horizon=H, future=H // 2), progress, normalizer, VIEWS,
                          StartPool(starts), config, history=2)


def test_bad_settings_get_a_clear_error(tmp_path):
    from policy.lerobot_adapter import cpu_diffusion_config

    per_step = ImaginedVectorEnv(moving_world_model(SIZE, horizon=H), sure_progress(True), Normalizer(UNIT), VIEWS,
                                 StartPool(random_starts(2)), ImaginedEnvConfig(num_envs=B, max_steps=16))
    with pytest.raises(RuntimeError, match="reset"):
        per_step.step(np.zeros((B, 7)))
    per_step.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        per_step.step(np.zeros((B, H, 7)))
    assert check_policy(cpu_diffusion_config(chunk_size=2 * H), H, 1) == 1  # re-plans every second chunk boundary
    assert check_policy(cpu_diffusion_config(chunk_size=H, n_obs_steps=2), H, 1) == 2
    with pytest.raises(ValueError, match="n_action_steps=8"):
        check_policy(cpu_diffusion_config(chunk_size=4), H, 1)
    with pytest.raises(ValueError, match="one frame every 2 env steps.*n_obs_steps=1, got 2"):
        check_policy(cpu_diffusion_config(chunk_size=H, n_obs_steps=2), H, 2)
    with pytest.raises(ValueError, match="--env.world_model and --env.progress"):
        ReverieEnvConfig(progress=tmp_path)
    with pytest.raises(FileNotFoundError, match="not a saved WorldModel"):
        ReverieEnvConfig(world_model=tmp_path, progress=tmp_path)


def test_dataset_starts_are_the_held_out_episodes_first_frames(tiny_dataset):
    from data.clips import DatasetConfig

    starts = dataset_starts(tiny_dataset, VIEWS, val_episodes=2)
    dataset = DatasetConfig(root=tiny_dataset, views=VIEWS, val_episodes=2)
    _, held_out = dataset.split()
    expected = StartFrames.from_dataset(dataset.clips(held_out, context=1, horizon=1, normalize=False), held_out,
                                        history=0)
    assert len(starts) == 2 and starts.history is None and starts.task == expected.task
    for name in ("frames", "first_frames", "state", "object_state"):
        torch.testing.assert_close(getattr(starts, name), getattr(expected, name), msg=name)
    assert StartPool(starts)([3, 4]).task == [starts.task[1], starts.task[0]]


def test_dataset_starts_read_the_old_layout_and_data_without_object_state(tiny_dataset, tmp_path):
    """A dataset of the old 7-value object state starts in the common layout; one without any (as a
    real robot records, here removed by lerobot-edit-dataset) starts with none, which the imagined
    env runs without and a scripted expert, which plans from it, refuses by name."""
    from policy.scripted import ScriptedPolicy
    from tests.data.test_merge_tasks import as_recorded_before_the_common_layout, lerobot_edit_dataset

    now = dataset_starts(tiny_dataset, VIEWS, val_episodes=2)
    old = dataset_starts(as_recorded_before_the_common_layout(tiny_dataset, tmp_path / "old"), VIEWS, val_episodes=2)
    torch.testing.assert_close(old.object_state, now.object_state)
    bare = tmp_path / "bare"
    lerobot_edit_dataset("--repo_id", "local/lift", "--root", str(tiny_dataset), "--new_repo_id", "local/bare",
                         "--new_root", str(bare), "--operation.type", "remove_feature",
                         "--operation.feature_names", f"['{keys.ENV_STATE}']")
    starts = dataset_starts(bare, VIEWS, val_episodes=2)
    assert starts.object_state.shape == (2, 0)
    torch.testing.assert_close(starts.frames, now.frames)
    env = ImaginedEnv(moving_world_model(SIZE, horizon=H), sure_progress(True), starts, Normalizer(UNIT), VIEWS,
                      ImaginedEnvConfig(num_envs=B, max_steps=8))
    obs, info = env.reset(seed=0)
    assert env.step(torch.zeros(B, H, 7))[4]["success"].all()
    with pytest.raises(ValueError, match="no object state.*scripted expert plans from"):
        ScriptedPolicy(task="lift", num_envs=B).reset(obs, info)
