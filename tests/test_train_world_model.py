"""reverie-train world_model: resuming equals not stopping; the console script trains, logs and
saves a model that loads; bad commands get clear errors."""

import json
import subprocess
import sys

import pytest
import torch

from data.clips import DatasetConfig
from simulator.world_model import WorldModel, WorldModelConfig
from train.world_model import TrainWorldModelConfig, train

TINY_MODEL = WorldModelConfig(context=2, future=2, horizon=4, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                              cond_dim=32)


def config(root, out, steps):
    return TrainWorldModelConfig(dataset=DatasetConfig(root=root, val_episodes=1), model=TINY_MODEL, frame_stride=2,
                                 output_dir=out, steps=steps, batch_size=4, checkpoint_every=2, log_every=1,
                                 warmup_steps=1, lr=1e-3, second_cycle=0)


def losses(out):
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def test_a_stopped_and_resumed_run_gives_the_same_losses(tiny_dataset, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(config(tiny_dataset, whole, steps=4))
    train(config(tiny_dataset, parts, steps=2))  # stops after its step-2 checkpoint, as if killed
    train(config(tiny_dataset, parts, steps=4))  # resumes from it
    a, b = losses(whole), losses(parts)
    assert a[3] == b[3] and a[4] == b[4] and a[1] == b[1]
    wa, wb = WorldModel.from_pretrained(whole / "model"), WorldModel.from_pretrained(parts / "model")
    assert all(torch.equal(p, q) for p, q in zip(wa.parameters(), wb.parameters()))  # EMA weights too


def test_fine_tuning_starts_from_the_saved_weights(tiny_dataset, tmp_path):
    from dataclasses import replace

    train(replace(config(tiny_dataset, tmp_path / "base", steps=3), lr=1e-2))
    saved = WorldModel.from_pretrained(tmp_path / "base" / "model").state_dict()
    distance = lambda folder: max((WorldModel.from_pretrained(folder / "model").state_dict()[k] - saved[k]).abs().max().item()
                                  for k in saved if not k.startswith("state_head."))  # the head is fitted again on the data
    train(replace(config(tiny_dataset, tmp_path / "tuned", steps=1), init_from=tmp_path / "base" / "model"))
    train(config(tiny_dataset, tmp_path / "scratch", steps=1))
    # one Adam step at lr 1e-3 moves each weight by about 1e-3 from where it started
    assert distance(tmp_path / "tuned") < 3e-3 < distance(tmp_path / "scratch")
    other = replace(config(tiny_dataset, tmp_path / "other", steps=1),
                    model=WorldModelConfig(**{**TINY_MODEL.__dict__, "cond_dim": 16}), init_from=tmp_path / "base" / "model")
    with pytest.raises(ValueError, match="other shapes"):
        train(other)


def test_a_fine_tune_keeps_the_statistics_its_model_was_trained_with(tiny_dataset, tmp_path):
    """reverie-align fine-tunes on a merged dataset, whose statistics differ from the ones the model
    learned to read: the fine-tune normalises with the model's own and saves them again."""
    from dataclasses import replace

    from simulator.env import NORMALIZATION_FILE

    base = train(config(tiny_dataset, tmp_path / "base", steps=1))
    stats = json.loads((base / NORMALIZATION_FILE).read_text())
    stats["action"]["std"] = [2 * v for v in stats["action"]["std"]]  # as if trained on wider actions
    (base / NORMALIZATION_FILE).write_text(json.dumps(stats))
    tuned = train(replace(config(tiny_dataset, tmp_path / "tuned", steps=1), init_from=base))
    assert json.loads((tuned / NORMALIZATION_FILE).read_text()) == stats


def test_the_second_cycle_is_a_fine_tune_of_the_first_cycles_model(tiny_dataset, tmp_path):
    """One command gives what the two commands of the measured recipe gave (docs/benchmarks.md, "A second
    cosine cycle"): the first cycle, then a fresh cycle from its EMA weights; a changed first cycle is refused."""
    from dataclasses import replace

    both = train(replace(config(tiny_dataset, tmp_path / "both", steps=2), second_cycle=2))
    first = train(config(tiny_dataset, tmp_path / "first", steps=2))
    second = train(replace(config(tiny_dataset, tmp_path / "second", steps=2), init_from=first))
    weights = lambda folder: WorldModel.from_pretrained(folder).state_dict()
    a, b, c = weights(both), weights(second), weights(first)
    assert all(torch.equal(a[k], b[k]) for k in a) and not all(torch.equal(a[k], c[k]) for k in a)
    assert all(torch.equal(weights(tmp_path / "both" / "first_cycle" / "model")[k], c[k]) for k in c)
    assert train(replace(config(tiny_dataset, tmp_path / "both", steps=2), second_cycle=2)) == both  # done: nothing to do
    with pytest.raises(ValueError, match="do not follow a first cycle of 3 steps"):
        train(replace(config(tiny_dataset, tmp_path / "both", steps=3), second_cycle=2))


def test_the_state_head_is_fitted_alone_first_then_frozen(tiny_dataset, tmp_path):
    """Before the frames train, the state head fits the training clips' states and actions alone (many
    clips a step, no frames) and predicts them better than when it trains beside the frames; the frames'
    steps then leave it as it is."""
    from dataclasses import replace

    from train.world_model import make_train_set

    fitted = train(config(tiny_dataset, tmp_path / "fitted", steps=1))
    longer = train(config(tiny_dataset, tmp_path / "longer", steps=3))
    beside = train(replace(config(tiny_dataset, tmp_path / "beside", steps=3), state_head_epochs=0))
    data, _ = make_train_set(config(tiny_dataset, tmp_path / "unused", steps=1))
    w = data.state_windows(torch.arange(len(data)))

    def state_error(folder):
        model = WorldModel.from_pretrained(folder)
        F = model.spec.future
        with torch.no_grad():
            err = (model.predict_state(w["context_state"], w["action"]) - w["future_state"][:, :F]).square().mean(-1)
        return (err * w["future_mask"][:, :F]).sum().item() / w["future_mask"][:, :F].sum().item()

    assert state_error(fitted) < 0.5 * state_error(beside)
    head = lambda folder: {k: v for k, v in WorldModel.from_pretrained(folder).state_dict().items() if k.startswith("state_head.")}
    a, b = head(fitted), head(longer)
    assert all(torch.equal(a[k], b[k]) for k in a)  # frozen through the frames' steps (and their EMA)
    assert not all(torch.equal(a[k], head(beside)[k]) for k in a)


def test_console_script_trains_logs_and_saves(tiny_dataset, tmp_path):
    out = tmp_path / "wm"
    cmd = [sys.executable, "-m", "train.cli", "world_model", "--dataset.root", str(tiny_dataset), "--dataset.val_episodes", "1",
           "--output_dir", str(out), "--steps", "1", "--second_cycle", "3", "--batch_size", "4", "--checkpoint_every", "1",
           "--keep_checkpoints", "2", "--frame_stride", "2",
           "--model.context", "2", "--model.horizon", "4", "--model.block_out_channels", "[16, 32]",
           "--model.norm_num_groups", "8", "--model.cond_dim", "32", "--model.layers_per_block", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    model = WorldModel.from_pretrained(out / "model")
    assert model.spec.views == 2 and model.spec.image_size == 32 and model.spec.future == 2
    assert list((out / "world_model").rglob("events.out.tfevents.*"))  # TensorBoard
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]  # newest 2 kept
    assert (out / "first_cycle" / "checkpoints" / "step_0000001").is_dir()  # the first cycle, then the second


def test_unknown_kind_and_missing_dataset_are_named(tmp_path, capsys, monkeypatch):
    """In the process (the console script runs as one above)."""
    from train.cli import main

    monkeypatch.chdir(tmp_path)  # nothing a run might start writes lands in the repository
    for argv, message in ((["painting"], "KIND is one of ['autoencoder', 'policy', 'progress', 'world_model'], got 'painting'"),
                          (["world_model", "--steps", "1"], "give a dataset: --dataset.root PATH")):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code != 0 and message in capsys.readouterr().err


def test_processes_get_disjoint_batches_in_a_fixed_order():
    from train.world_model import batches_from

    data = list(range(40))
    cfg = TrainWorldModelConfig(dataset=DatasetConfig(root="unused"), batch_size=4, seed=3)
    take = lambda it, n: [next(it).tolist() for _ in range(n)]  # noqa: E731
    r0, r1 = take(batches_from(data, cfg, 0, rank=0, world=2), 7), take(batches_from(data, cfg, 0, rank=1, world=2), 7)
    assert not set(sum(r0[:5], [])) & set(sum(r1[:5], []))  # one epoch: 5 steps x 2 processes x 4 = 40 clips
    assert sorted(sum(r0[:5] + r1[:5], [])) == data
    assert take(batches_from(data, cfg, 3, rank=1, world=2), 4) == r1[3:7]  # resuming at step 3, across the epoch edge
