"""train.loop's outputs survive crashes: the EMA is checkpointed as safetensors and restored exactly,
the final model is swapped in whole and re-made when missing, metrics.jsonl holds each step once
after a resume, a damaged newest checkpoint falls back to the one before with a warning naming the
file, stale temporary folders are removed; and no model loads weights from a pickle (.bin)."""

import json
import logging
import os
import shutil

import pytest
import torch

from policy.flow import FlowPolicy
from simulator.progress import ProgressModel
from simulator.world_model import WorldModel
from simulator.world_model.autoencoder import build_autoencoder, load_autoencoder
from tests.test_train_world_model import config
from train import loop
from train.world_model import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """A finished 4-step world-model run with checkpoints at steps 2 and 4 and metrics at every step."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(config(tiny_dataset, out, steps=4))
    return out


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the finished run, for a test to damage."""
    return shutil.copytree(trained, tmp_path / "run")


def steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_restores_the_ema_from_safetensors(run, tiny_dataset):
    ckpt = run / "checkpoints" / "step_0000004"
    assert (ckpt / "ema.safetensors").is_file()
    assert not [p.name for p in ckpt.rglob("custom_checkpoint_*")]  # no pickled EMA
    cfg = config(tiny_dataset, run, steps=4)
    fresh = WorldModel.from_config(WorldModel.load_config(run / "model"))  # untrained weights
    _, ema, _, _, step = loop.prepare(loop.make_accelerator(cfg), cfg, fresh, {}, "world_model")
    assert step == 4 and ema.optimization_step == 4
    saved = WorldModel.from_pretrained(ckpt / "model")  # the EMA weights the checkpoint was written with
    assert len(ema.shadow_params) == len(list(saved.parameters()))
    assert all(torch.equal(s, p) for s, p in zip(ema.shadow_params, saved.parameters()))


def test_a_missing_model_is_remade_from_the_last_checkpoint(run, tiny_dataset):
    (run / "model" / WEIGHTS).unlink()
    assert train(config(tiny_dataset, run, steps=4)) == run / "model"
    assert same_weights(WorldModel.from_pretrained(run / "model"),
                        WorldModel.from_pretrained(run / "checkpoints" / "step_0000004" / "model"))
    assert (run / "model" / "normalization.json").is_file()


def test_a_swap_cut_short_leaves_a_complete_model(run, tiny_dataset):
    # Killed between the swap's two renames: the old model is aside as model.old, the new one in model.tmp.
    (run / "model").rename(run / "model.old")
    shutil.copytree(run / "model.old", run / "model.tmp")
    (run / "model.tmp" / WEIGHTS).unlink()
    train(config(tiny_dataset, run, steps=4))
    assert not (run / "model.old").exists() and not (run / "model.tmp").exists()
    assert same_weights(WorldModel.from_pretrained(run / "model"),
                        WorldModel.from_pretrained(run / "checkpoints" / "step_0000004" / "model"))


def test_metrics_after_a_resume_hold_each_step_once(run, tiny_dataset):
    assert steps(run) == [1, 2, 3, 4]
    shutil.rmtree(run / "checkpoints" / "step_0000004")  # killed after logging step 4, before its checkpoint
    train(config(tiny_dataset, run, steps=4))
    assert steps(run) == [1, 2, 3, 4]


@pytest.mark.parametrize("damaged", ["state/model.safetensors", "state/optimizer.bin", "ema.safetensors"])
def test_a_truncated_checkpoint_falls_back_to_the_one_before(run, tiny_dataset, caplog, damaged):
    path = run / "checkpoints" / "step_0000004" / damaged
    os.truncate(path, path.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="train.loop"):
        train(config(tiny_dataset, run, steps=4))
    assert str(path) in caplog.text and "step_0000002" in caplog.text
    assert steps(run) == [1, 2, 3, 4]  # steps 3 and 4 were trained again
    cfg = config(tiny_dataset, run, steps=4)  # the re-written step-4 checkpoint loads
    fresh = WorldModel.from_config(WorldModel.load_config(run / "model"))
    assert loop.prepare(loop.make_accelerator(cfg), cfg, fresh, {}, "world_model")[-1] == 4


def test_no_checkpoint_readable_is_an_error_that_names_them(run, tiny_dataset):
    for ckpt in (run / "checkpoints").iterdir():
        os.truncate(ckpt / "ema.safetensors", 10)
    with pytest.raises(RuntimeError, match="step_0000002.*step_0000004|step_0000004.*step_0000002"):
        train(config(tiny_dataset, run, steps=4))


def test_stale_temporary_checkpoints_are_removed(run, tiny_dataset):
    stale = run / "checkpoints" / "step_0000006.tmp"
    shutil.copytree(run / "checkpoints" / "step_0000004", stale)
    train(config(tiny_dataset, run, steps=4))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]


def save_pickled(model, folder):
    model.save_pretrained(folder, safe_serialization=False)  # diffusion_pytorch_model.bin
    assert not list(folder.glob("*.safetensors"))


@pytest.mark.parametrize("load", [
    lambda folder: (save_pickled(WorldModel(views=1, image_size=16, context=1, future=1, horizon=2, block_out_channels=(8, 8),
                                            norm_num_groups=4, cond_dim=8), folder), WorldModel.from_pretrained(folder)),
    lambda folder: (save_pickled(ProgressModel(views=("front",), image_size=16, channels=(8,), norm_num_groups=4, width=8,
                                               ensemble=1, head_width=8), folder), ProgressModel.from_pretrained(folder)),
    lambda folder: (save_pickled(FlowPolicy(image_size=16, channels=(8, 8), width=16, depth=1, heads=2), folder),
                    FlowPolicy.from_pretrained(folder)),
    lambda folder: (save_pickled(build_autoencoder(latent_channels=2, downsample=2, width=8, norm_num_groups=4), folder),
                    load_autoencoder(folder)),
], ids=["world_model", "progress", "flow_policy", "autoencoder"])
def test_a_model_saved_as_a_pickle_is_refused(tmp_path, load):
    with pytest.raises(OSError, match=f"no file named {WEIGHTS}"):
        load(tmp_path / "model")
