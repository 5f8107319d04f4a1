"""The LeRobot user's path (issue 22): a Diffusion Policy trained by lerobot's own ``lerobot-train``
on a Reverie dataset with its defaults (two observation steps) is evaluated by ``reverie-eval
policy`` in both simulators, fine-tuned by ``reverie-rl`` (GRPO and filtered imitation) and
evaluated in imagination by lerobot's own ``lerobot-eval --env.type=reverie``:
``test_the_lerobot_user_path_end_to_end``, the slow one (marked ``slow``).

Beside it, fast checks of what filtered imitation trains such a policy on: lerobot's own training
batch, the observation one env step before and the action window from the action taken there,
padded as lerobot's dataset pads, from real frames and from imagined rollouts."""

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from data.clips import LOCAL_REPO_ID, DatasetConfig
from simulator import keys
from tests.rl.conftest import tiny_models  # noqa: F401  (a fixture: the tiny world and progress models)
from tests.test_lerobot_eval import random_starts
from tests.test_lerobot_history import VIEWS, imagined, two_step_policy
from train.rl.base import collect
from train.rl.filtered_imitation import FilteredImitation, FilteredImitationConfig

PREV, H = keys.previous_key, 8
BIN = Path(sys.executable).parent  # the venv's console scripts: lerobot-train, reverie-eval, ...

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def policy():
    return two_step_policy()


def lerobot_batch(policy, obs: dict, window: torch.Tensor, pad: torch.Tensor) -> dict:
    """lerobot's training batch by hand: each input with its two observation steps, oldest first."""
    inputs = {k: torch.stack([obs[PREV(k)], obs[k]], 1) for k in policy.config.input_features}
    return policy.preprocessor(inputs | {keys.TASK: obs[keys.TASK], keys.ACTION: window, "action_is_pad": pad})


def test_the_two_step_loss_is_lerobots_with_the_action_before(policy):
    g = torch.Generator().manual_seed(0)
    obs = {k: torch.rand(2, 3, 32, 32, generator=g) for v in VIEWS for k in (keys.image_key(v), PREV(keys.image_key(v)))}
    obs |= {keys.STATE: torch.randn(2, 8, generator=g), PREV(keys.STATE): torch.randn(2, 8, generator=g),
            keys.TASK: ["lift"] * 2}
    actions = torch.rand(2, 1 + H, 7, generator=g) * 2 - 1  # the action before, then the chunk
    horizon = policy.config.horizon  # 16: the window runs past the chunk
    window = torch.cat([actions, actions[:, -1:].expand(2, horizon - 1 - H, 7)], 1)  # held past the chunk
    pad = torch.arange(horizon).expand(2, -1) > H
    policy.train()
    try:
        torch.manual_seed(5)
        expected = policy.policy.forward(lerobot_batch(policy, obs, window, pad))[0]
        torch.manual_seed(5)
        torch.testing.assert_close(policy.loss(obs, actions), expected)
        # the whole window given (the actions after the chunk too): lerobot's batch, nothing padded
        full = torch.rand(2, horizon, 7, generator=g) * 2 - 1
        torch.manual_seed(5)
        expected = policy.policy.forward(lerobot_batch(policy, obs, full, torch.zeros_like(pad)))[0]
        torch.manual_seed(5)
        torch.testing.assert_close(policy.loss(obs, full), expected)
        # at an episode's first step there is no action before: padding, a copy of the first one
        mask = torch.ones(2, 1 + H, dtype=torch.bool)
        mask[0, 0] = False
        garbage, copied = actions.clone(), actions.clone()
        garbage[0, 0], copied[0, 0] = 100.0, actions[0, 1]
        with torch.no_grad():
            masked, unmasked, edge = (policy.loss(obs, x, m, torch.Generator().manual_seed(2))
                                      for x, m in ((garbage, mask), (garbage, None), (copied, None)))
        torch.testing.assert_close(masked, edge)
        assert not torch.allclose(unmasked, edge)
    finally:
        policy.eval()
    with pytest.raises(ValueError, match=r"actions must be \(n, 9..16, 7\): the action taken at the step before"):
        policy.loss(obs, actions[:, 1:])
    with pytest.raises(KeyError, match=r"previous\.observation\.state"):
        policy.loss({k: v for k, v in obs.items() if k != PREV(keys.STATE)}, actions)


def test_real_frames_give_the_batch_lerobots_dataset_gives(policy, tiny_dataset):
    """Filtered imitation's real share, against lerobot's LeRobotDataset with the policy's delta
    timestamps: an episode's first frame (clamped history, padded action before), its second, a
    middle one and its last (padded future)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    cfg = FilteredImitationConfig(group_size=2, real_share=1.0, shift=0)
    algorithm = FilteredImitation(policy, cfg, VIEWS, dataset=DatasetConfig(root=tiny_dataset, val_episodes=1))
    frames = algorithm.frames
    fps = LeRobotDataset(LOCAL_REPO_ID, root=tiny_dataset).fps
    deltas = {keys.STATE: [i / fps for i in policy.config.observation_delta_indices],
              keys.ACTION: [i / fps for i in policy.config.action_delta_indices]}
    dataset = LeRobotDataset(LOCAL_REPO_ID, root=tiny_dataset, delta_timestamps=deltas)
    first, end = frames.episode_bounds[1]  # the training episodes are the dataset's first: rows are its indices
    for row in (first, first + 1, (first + end) // 2, end - 1):
        algorithm.real_pool = torch.tensor([row])
        obs, actions, mask = algorithm._batch([algorithm._real(1, torch.Generator())], torch.Generator())
        window, pad = policy._action_window(actions, mask)
        item = dataset[row]
        torch.testing.assert_close(torch.stack([obs[PREV(keys.STATE)][0], obs[keys.STATE][0]]), item[keys.STATE])
        # the whole window, past the chunk too: lerobot reads on in the episode, and so do we
        assert actions.shape[1] == policy.config.horizon
        torch.testing.assert_close(window[0], item[keys.ACTION])
        assert pad[0].tolist() == item["action_is_pad"].tolist()
        assert pad[0, 0].item() == (row == first) and pad[0, -1].item() == (row + policy.config.horizon - 2 >= end)


def test_rollout_chunks_carry_the_step_before_and_its_action(policy, tiny_dataset):
    """From imagined rollouts: the action before a chunk is the previous chunk's last; none at the
    episode's first chunk. Then one filtered-imitation update on rollouts and real frames."""
    env = imagined(random_starts(2))
    rollouts = collect(env, policy, VIEWS, torch.arange(2), seed=0, generator=torch.Generator().manual_seed(0),
                       log_prob=False)
    T = rollouts.images.shape[0]
    assert T == 2 and rollouts.alive.all()
    cfg = FilteredImitationConfig(group_size=2, real_share=0.5, batch_size=4, steps_per_iteration=1, shift=0)
    algorithm = FilteredImitation(policy, cfg, VIEWS, dataset=DatasetConfig(root=tiny_dataset, val_episodes=1))
    t, b = torch.arange(T).repeat_interleave(2), torch.arange(2).repeat(T)
    bins = torch.zeros(2, dtype=torch.long)
    chunks = algorithm._chunks(rollouts, t, b, bins, algorithm.steps) | algorithm._history(rollouts, t, b)
    obs, actions, mask = algorithm._batch([chunks], torch.Generator())
    # the action before, the chunk, then the next chunk's first 7: policy.config.horizon in all
    assert algorithm.steps == policy.config.horizon - 1 and actions.shape == (2 * T, 1 + algorithm.steps, 7)
    assert mask[:, 0].tolist() == (t > 0).tolist() and mask[:, 1:1 + H].all()
    torch.testing.assert_close(actions[t > 0, 0], rollouts.actions[0, :, -1])  # chunk 0's last action
    torch.testing.assert_close(actions[t == 0, 1 + H:], rollouts.actions[1, :, :H - 1])  # on into chunk 1
    assert mask[t == 0, 1 + H:].all() and not mask[t == T - 1, 1 + H:].any()  # past the last chunk: padding
    torch.testing.assert_close(obs[PREV(keys.STATE)], rollouts.previous_state[t, b])
    torch.testing.assert_close(obs[PREV(keys.STATE)][t == 0], obs[keys.STATE][t == 0])  # the start, repeated
    assert torch.isfinite(policy.loss(obs, actions, mask, torch.Generator().manual_seed(0)))

    before = {k: v.clone() for k, v in policy.state_dict().items()}
    try:
        metrics = algorithm.update(rollouts, torch.Generator().manual_seed(1))
        assert metrics["real_share"] > 0 and any(not torch.equal(before[k], v) for k, v in policy.state_dict().items())
    finally:
        policy.load_state_dict(before)
    with pytest.raises(ValueError, match="one env step before.*frame stride 1"):
        algorithm._history(replace(rollouts, previous_images=None), t, b)


# --- the end-to-end path, through the console scripts -------------------------------------------

# lerobot-train at a tiny size, otherwise lerobot's defaults (n_obs_steps 2, horizon 16,
# n_action_steps 8: the tiny world model's chunk); the inputs without the object state, with the
# flag the imagined env's refusal quotes (policy.lerobot_adapter.env_state_refusal).
INPUTS = json.dumps({**{keys.image_key(v): {"type": "VISUAL", "shape": [3, 32, 32]} for v in VIEWS},
                     keys.STATE: {"type": "STATE", "shape": [8]}})
TRAIN_FLAGS = ["--policy.type=diffusion", "--policy.device=cpu", "--policy.push_to_hub=false",
               f"--policy.input_features={INPUTS}", "--policy.pretrained_backbone_weights=null",
               "--policy.use_group_norm=true", "--policy.crop_shape=[28, 28]", "--policy.down_dims=[16, 32]",
               "--policy.diffusion_step_embed_dim=16", "--policy.spatial_softmax_num_keypoints=8",
               "--policy.noise_scheduler_type=DDIM", "--policy.num_inference_steps=4",
               "--steps=2", "--batch_size=4", "--num_workers=0", "--log_freq=1", "--save_freq=2",
               "--wandb.enable=false"]
TRAINED = Path("checkpoints/last/pretrained_model")  # where lerobot-train leaves the policy


def run(argv: list[str], cwd: Path, timeout: int = 150) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MUJOCO_GL": "egl"}
    return subprocess.run(argv, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def lerobot_train(dataset: Path, out: Path) -> Path:
    start = time.perf_counter()
    done = run([str(BIN / "lerobot-train"), f"--dataset.repo_id={LOCAL_REPO_ID}", f"--dataset.root={dataset}",
                *TRAIN_FLAGS, f"--output_dir={out}"], out.parent)
    assert done.returncode == 0, done.stderr[-4000:]
    print(f"lerobot-train: {time.perf_counter() - start:.1f} s for 2 steps")
    assert (out / TRAINED / "model.safetensors").is_file()
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_lerobot_user_path_end_to_end(tiny_dataset, tiny_models, tmp_path):  # noqa: F811
    from policy import load_policy
    from policy.lerobot_diffusion import LerobotDiffusionPolicy

    trained = lerobot_train(tiny_dataset, tmp_path / "train")
    assert json.loads((trained / TRAINED / "config.json").read_text())["n_obs_steps"] == 2  # lerobot's default
    models = [f"--world_model={tiny_models / 'world_model'}", f"--progress={tiny_models / 'progress'}"]

    # (a) reverie-eval policy: the policy in both simulators, from lerobot-train's output folder
    done = run([str(BIN / "reverie-eval"), "policy", *models, "--policies", f"lerobot={trained}", "--episodes=2",
                "--num_envs=2", "--physics_ceiling=false", f"--output_dir={tmp_path / 'eval'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "eval" / "policy_eval.json").read_text())["runs"]["lerobot"]
    for sim in ("imagined", "physics"):
        assert len(report[sim]["success"]) == 2 and set(report[sim]["success"]) <= {True, False}

    # (b) reverie-rl, one iteration of GRPO (DPPO) and of filtered imitation (lerobot's own loss)
    rl = [str(BIN / "reverie-rl"), f"--policy={trained}", *models, f"--dataset.root={tiny_dataset}",
          "--dataset.val_episodes=1", "--iterations=1", "--env.num_envs=4", "--env.max_steps=16", "--eval_episodes=0"]
    algorithms = {"grpo": ["--algorithm.min_return_std=0"],
                  "filtered_imitation": ["--algorithm.steps_per_iteration=2", "--algorithm.batch_size=8"]}
    for algorithm, flags in algorithms.items():
        done = run([*rl, f"--algorithm.type={algorithm}", "--algorithm.group_size=2", *flags,
                    f"--output_dir={tmp_path / algorithm}"], tmp_path)
        assert done.returncode == 0, done.stderr[-4000:]
        tuned = load_policy(tmp_path / algorithm / "policy", num_envs=2)
        assert isinstance(tuned, LerobotDiffusionPolicy) and tuned.config.n_obs_steps == 2

    # (c) lerobot-eval in imagination, the two observation steps peeked inside each chunk
    lerobot_eval = [str(BIN / "lerobot-eval"), "--env.type=reverie", f"--env.world_model={tiny_models / 'world_model'}",
                    f"--env.progress={tiny_models / 'progress'}", f"--env.dataset={tiny_dataset}", "--env.val_episodes=1",
                    "--env.imagined.max_steps=16", "--eval.n_episodes=2", "--eval.batch_size=2", "--seed=3"]
    done = run([*lerobot_eval, f"--policy.path={trained / TRAINED}", f"--output_dir={tmp_path / 'lerobot_eval'}"],
               tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    info = json.loads((tmp_path / "lerobot_eval" / "eval_info.json").read_text())
    assert info["overall"]["n_episodes"] == 2 and 0.0 <= info["overall"]["pc_success"] <= 100.0
