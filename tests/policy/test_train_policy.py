"""``reverie-train policy`` on the tiny dataset for every policy type: a few steps with a finite
loss, a resume after a kill that continues exactly, a longer second run that continues
metrics.jsonl, and <output_dir>/model loaded with ``policy.load_policy`` acting on a physics-like
observation; the console script's help and the config's errors."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from data.clips import DatasetConfig
from data.episodes import FrameTable, load_episodes, regenerate, regenerate_episodes
from policy import load_policy
from policy.flow import FlowPolicy, FlowPolicyConfig
from policy.lerobot_diffusion import LerobotDiffusionPolicy
from simulator import keys
from tests.conftest import moving_world_model
from train.policy import POLICY_TYPES, TrainPolicyConfig, train

B, SIZE = 2, 32
# Each policy type at a tiny size (the diffusion policy keeps lerobot's ResNet18: none is smaller).
TINY = {"flow": {"policy": FlowPolicyConfig(channels=(8, 8), width=32, depth=1, heads=2)},
        "diffusion": {"diffusion": {"down_dims": [16, 32], "diffusion_step_embed_dim": 16, "n_groups": 4,
                                    "spatial_softmax_num_keypoints": 8, "num_inference_steps": 4}}}
LOADS_AS = {"flow": FlowPolicy, "diffusion": LerobotDiffusionPolicy}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def config(root: Path, out: Path, policy_type: str, steps: int) -> TrainPolicyConfig:
    return TrainPolicyConfig(dataset=DatasetConfig(root=root, val_episodes=1), output_dir=out,
                             policy_type=policy_type, steps=steps, batch_size=4, warmup_steps=1, log_every=1,
                             checkpoint_every=2, **TINY[policy_type])


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def observation(seed: int = 0) -> dict:
    """What the physics env gives: float images in [0, 1], the state, the task."""
    g = torch.Generator().manual_seed(seed)
    obs = {keys.image_key(v): torch.rand(B, 3, SIZE, SIZE, generator=g) for v in ("front", "wrist")}
    return obs | {keys.STATE: torch.randn(B, 8, generator=g), keys.TASK: ["lift the cube"] * B}


@pytest.mark.parametrize("policy_type", POLICY_TYPES)
def test_trains_resumes_and_loads(tiny_dataset, tmp_path, policy_type):
    out = tmp_path / policy_type
    assert train(config(tiny_dataset, out, policy_type, steps=3)) == out / "model"
    straight = metrics(out)
    assert [r["step"] for r in straight] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in straight)

    # Killed after the step-2 checkpoint: the same command redoes step 3 exactly.
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in straight[:2]))
    shutil.rmtree(out / "checkpoints" / "step_0000003")
    train(config(tiny_dataset, out, policy_type, steps=3))
    resumed = metrics(out)[2]
    assert resumed["step"] == 3
    expected = (straight[2]["loss"], straight[2]["grad_norm"])
    assert (resumed["loss"], resumed["grad_norm"]) == pytest.approx(expected, abs=1e-6)

    train(config(tiny_dataset, out, policy_type, steps=4))  # more steps continue from step 3
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]

    policy = load_policy(out / "model", num_envs=B)
    assert isinstance(policy, LOADS_AS[policy_type])
    policy.reset(observation(), {})
    chunk = policy.select_action_chunk(observation())
    assert chunk.shape == (B, 8, 7) and chunk.isfinite().all()
    if policy_type == "diffusion":
        sample = policy.sample(observation(), generator=torch.Generator().manual_seed(0))
        assert sample.actions.shape == (B, 8, 7) and sample.log_probs.isfinite().all()


def test_console_help(capsys):
    """In the process: the installed ``reverie-train`` runs as one in tests/test_cli_errors.py."""
    from train.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["policy", "--help"])
    assert exit_.value.code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "--policy_type" in out and "--diffusion" in out


@pytest.mark.parametrize("options, message", [
    ({"policy_type": "act"}, r"policy_type must be one of \('flow', 'diffusion'\), got .*'act'"),
    ({"diffusion": {"down_dims": [16, 32]}}, "diffusion options are for --policy_type diffusion"),
    ({"policy_type": "diffusion", "diffusion": {"n_action_steps": 4, "down_dim": [8]}},
     r"DiffusionConfig fields other than .*got \['down_dim', 'n_action_steps'\]"),
])
def test_bad_options_are_named(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        TrainPolicyConfig(dataset=DatasetConfig(root=tmp_path), **options)


def test_clones_the_world_models_regenerations_too(tiny_dataset, tmp_path):
    """With --world_model the table holds each episode re-imagined open loop (the real first frame
    and state, then imagined ones), batches read from it at regenerated_prob, and training runs."""
    moving_world_model(SIZE).save_pretrained(tmp_path / "wm")
    cfg = config(tiny_dataset, tmp_path / "out", "flow", steps=2)
    clips = cfg.dataset.clips(cfg.dataset.split()[0], context=1, horizon=1, normalize=False, cache_frames=True)
    table = FrameTable(clips, chunk_size=8)
    table.regenerate(tmp_path / "wm", tiny_dataset, torch.device("cpu"))
    assert table.regenerated_frames.shape == table.frames.shape and table.regenerated_state.shape == table.state.shape
    firsts = [a for a, _ in table.episode_bounds]
    assert torch.equal(table.regenerated_frames[firsts], table.frames[firsts])  # the real start of each episode
    assert torch.allclose(table.regenerated_state[firsts], table.state[firsts])
    later = torch.ones(len(table), dtype=torch.bool)
    later[firsts] = False
    assert not torch.equal(table.regenerated_frames[later], table.frames[later])  # imagined after it
    assert not torch.allclose(table.regenerated_state[later], table.state[later])
    # one re-generation entry point: the evaluation's episodes re-imagine as the training table does
    episodes, _ = load_episodes(cfg.dataset, cfg.dataset.split()[0])
    regenerate(episodes, tmp_path / "wm", tiny_dataset, "cpu")
    for e, (a, b) in zip(episodes, table.episode_bounds, strict=True):
        assert torch.equal(e.regenerated, table.regenerated_frames[a:b].transpose(0, 1))
    one_view = [(e.frames[:1], e.actions, e.states) for e in episodes]
    with pytest.raises(ValueError, match="imagines 2 views of 32px, the episodes have 1 of 32px"):
        regenerate_episodes(one_view, tmp_path / "wm", tiny_dataset, "cpu")

    def first_batch(prob: float) -> dict:
        return next(table.batches(dataclasses.replace(cfg, regenerated_prob=prob), step=0))
    real, regen, half = first_batch(0.0), first_batch(1.0), first_batch(0.5)
    assert torch.equal(regen["action"], real["action"]) and not torch.equal(regen["frames"], real["frames"])
    from_regen = (half["frames"] == regen["frames"]).flatten(1).all(1)
    from_real = (half["frames"] == real["frames"]).flatten(1).all(1)
    assert (from_regen | from_real).all() and from_regen.any() and from_real.any()

    out = train(dataclasses.replace(cfg, world_model=tmp_path / "wm"))
    assert all(math.isfinite(r["loss"]) for r in metrics(tmp_path / "out")) and (out / "config.json").is_file()
    with pytest.raises(FileNotFoundError, match="not a saved world model"):
        TrainPolicyConfig(dataset=DatasetConfig(root=tiny_dataset), world_model=tmp_path / "out")
