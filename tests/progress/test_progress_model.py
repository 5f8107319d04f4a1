"""The progress value model: outputs in range, the task and the frame history matter, exact
save/load, clear errors for inputs and checkpoints that do not fit; its training data (labels,
rewinds, task mismatches), a loss that falls, and ``reverie-train progress`` resuming exactly."""

import json
import zlib

import pytest
import torch

from data.clips import DatasetConfig
from data.episodes import load_episodes
from simulator.progress import ProgressConfig, ProgressModel, history_indices, task_tokens
from simulator.world_model import WorldModel
from train.cli import main as train_main
from train.progress import (
    DISTRACTOR_TASKS,
    TrainProgressConfig,
    progress_loss,
    rewind_indices,
    sample_batch,
    train,
)

SIZES = dict(history=2, history_stride=2, channels=(8, 16), norm_num_groups=4, pool_size=2, width=32, task_buckets=64,
             ensemble=3, head_width=16)
TINY = dict(views=("front", "wrist"), image_size=32, **SIZES)
LIFT = "pick up the red cube"


def inputs(batch: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 2, 2, 3, 32, 32, generator=gen), torch.rand(batch, 2, 3, 32, 32, generator=gen)


def test_outputs_are_in_range_and_depend_on_task_and_history():
    torch.manual_seed(0)
    model = ProgressModel(**TINY).eval()
    frames, first = inputs()
    out = model(frames, first, [LIFT] * 3)
    assert out.progress.shape == out.success_logit.shape == out.uncertainty.shape == (3,)
    assert out.progress_logits.shape == out.success_logits.shape == (3, 3)
    assert ((out.progress > 0) & (out.progress < 1)).all()
    assert (out.uncertainty > 0).all()  # the heads start different
    torch.testing.assert_close(out.progress, torch.sigmoid(out.progress_logits).mean(1))
    other = model(frames, first, ["stack the red cube on the green cube"] * 3)
    assert (other.progress - out.progress).abs().min() > 1e-4
    reversed_history = model(frames.flip(2), first, [LIFT] * 3)
    assert (reversed_history.progress - out.progress).abs().min() > 0  # exactly equal if the history were ignored
    alone = model(frames[1:2], first[1:2], [LIFT])  # a sample's output does not depend on its batch
    torch.testing.assert_close(alone.progress, out.progress[1:2])


def test_task_tokens_hash_words_and_word_pairs():
    ids = lambda *grams: [zlib.crc32(g.encode()) % 64 for g in grams]  # noqa: E731
    assert task_tokens("Pick UP, the", 64) == ids("pick", "up", "the", "pick up", "up the")
    assert task_tokens("", 64) == []
    model = ProgressModel(**TINY).eval()
    frames, first = inputs(2)
    assert torch.isfinite(model(frames, first, ["", LIFT]).progress).all()  # an empty task embeds to zeros


def test_history_and_rewind_indices():
    assert history_indices(0, 3, 2) == [0, 0, 0]  # before the start: the first frame
    assert history_indices(5, 3, 2) == [1, 3, 5]
    assert rewind_indices(5, 5, 3, 2) == [1, 3, 5]  # no rewind
    # forward to frame 8, then back to 5: play positions 7, 9, 11 show frames 7, 7, 5
    assert rewind_indices(5, 8, 3, 2) == [7, 7, 5]
    assert rewind_indices(2, 3, 3, 2) == [0, 2, 2]
    with pytest.raises(ValueError, match="need 0 <= t <= turn"):
        rewind_indices(4, 3, 2, 1)


def test_score_episode_reads_each_frame_with_its_history():
    torch.manual_seed(0)
    model = ProgressModel(**TINY).eval()
    episode = (torch.rand(2, 5, 3, 32, 32) * 255).round().to(torch.uint8)  # (V, N, 3, h, w)
    scores = model.score_episode(episode, LIFT, batch_size=2)
    assert scores.progress.shape == (5,)
    x = episode.float() / 255
    with torch.no_grad():
        direct = model(x[:, [1, 3]][None], x[:, 0][None], [LIFT])  # frame 3 with stride 2: frames 1 and 3
    torch.testing.assert_close(scores.progress[3:4], direct.progress)
    torch.testing.assert_close(model.score_episode(x, LIFT).progress, scores.progress)  # uint8 == float / 255


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = ProgressModel(**TINY).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = ProgressModel.from_pretrained(tmp_path / "m")
    assert loaded.spec == model.spec and loaded.spec.views == ("front", "wrist") and not loaded.training
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), loaded.state_dict().values()))
    frames, first = inputs()
    with torch.no_grad():
        a, b = model(frames, first, [LIFT] * 3), loaded(frames, first, [LIFT] * 3)
    assert torch.equal(a.progress, b.progress) and torch.equal(a.success_logit, b.success_logit)


@pytest.mark.parametrize("change, error, message", [
    (lambda f, g, t: (f[:, :1], g, t), ValueError, r"V=2 views \('front', 'wrist'\)"),
    (lambda f, g, t: (torch.cat([f, f], 2), g, t), ValueError, r"\(B, V, T, 3, h, w\) = \(B, 2, 2, 3, 32, 32\)"),
    (lambda f, g, t: (f[..., :16, :16], g, t), ValueError, r"= \(B, 2, 2, 3, 32, 32\), got \(3, 2, 2, 3, 16, 16\)"),
    (lambda f, g, t: ((f * 255).to(torch.uint8), g, t), TypeError, "frames must be a floating-point tensor"),
    (lambda f, g, t: (f, g[:, :, :, :16], t), ValueError, r"first_frames must have shape \(B, V, 3, h, w\)"),
    (lambda f, g, t: (f, g[:2], t), ValueError, "first_frames has batch size 2, frames has 3"),
    (lambda f, g, t: (f, g, LIFT), TypeError, r"task must be a list of B strings"),
    (lambda f, g, t: (f, g, t[:2]), ValueError, "task has 2 strings, frames has batch size 3"),
])
def test_inputs_that_do_not_fit_are_named(change, error, message):
    model = ProgressModel(**TINY)
    frames, first = inputs()
    with pytest.raises(error, match=message):
        model(*change(frames, first, [LIFT] * 3))


def test_bad_configs_are_named():
    with pytest.raises(ValueError, match="views must name at least one camera"):
        ProgressConfig(views=())
    with pytest.raises(ValueError, match="multiples of norm_num_groups"):
        ProgressConfig(channels=(12, 16), norm_num_groups=8)
    with pytest.raises(ValueError, match=r"ensemble must be >= 1, got getattr\(self, name\)=0"):
        ProgressConfig(ensemble=0)
    with pytest.raises(ValueError, match="image_size must be divisible"):
        ProgressConfig(image_size=40)


def test_a_checkpoint_of_another_kind_is_refused_by_name(tmp_path):
    WorldModel(views=2, image_size=32, context=2, future=2, horizon=4, block_out_channels=(16, 32),
               norm_num_groups=8, cond_dim=32).save_pretrained(tmp_path / "world_model")
    with pytest.raises(ValueError, match="holds a WorldModel checkpoint, not a ProgressModel"):
        ProgressModel.from_pretrained(tmp_path / "world_model")
    ProgressModel(**TINY).save_pretrained(tmp_path / "run" / "model")
    with pytest.raises(FileNotFoundError, match="training output folder: load .*run/model"):
        ProgressModel.from_pretrained(tmp_path / "run")


# ---- training -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def episodes(tiny_dataset):
    episodes, views = load_episodes(DatasetConfig(root=tiny_dataset), [0, 1, 2, 3])
    assert views == ("front", "wrist")
    return episodes


def test_episodes_carry_the_labels_of_the_dataset(episodes):
    assert {e.success for e in episodes} == {True, False}  # the tiny dataset has both
    for e in episodes:
        assert e.frames.dtype == torch.uint8 and e.frames.shape == (2, e.length, 3, 32, 32) and e.task == LIFT
        assert not e.solved[0]
        if e.success:  # the label reaches 1 on the frame whose action solves it; the next frame shows it solved
            reached = int((e.progress >= 1).nonzero()[0])
            assert int(e.solved.nonzero()[0]) == reached + 1 and e.solved[-1]
        else:
            assert not e.solved.any() and (e.progress < 1).all()


def batch_config(**kw):
    return TrainProgressConfig(dataset=DatasetConfig(root="unused"), **kw)


def test_batches_hold_rewinds_and_mismatches_with_their_targets(episodes):
    cfg = batch_config(batch_size=64, rewind_prob=0.5, mismatch_prob=0.3)
    spec = ProgressConfig(**TINY)
    batch = sample_batch(episodes, cfg, spec, index=7)
    assert batch["frames"].shape == (64, 2, 2, 3, 32, 32) and batch["first_frames"].shape == (64, 2, 3, 32, 32)
    assert 0 <= batch["frames"].min() and batch["frames"].max() <= 1
    assert batch["weights"].shape == (64, 3) and batch["rewind"].any() and batch["mismatch"].any()
    wrong = batch["mismatch"]
    assert all((t != LIFT) == bool(m) for t, m in zip(batch["task"], wrong))
    assert set(batch["task"]) - {LIFT} <= set(DISTRACTOR_TASKS)
    assert (batch["progress"][wrong] == 0).all() and (batch["solved"][wrong] == 0).all()
    assert batch["progress"][~wrong].max() == 1 and batch["solved"][~wrong].any()
    again = sample_batch(episodes, cfg, spec, index=7)  # a function of (seed, index): resumable
    assert torch.equal(again["frames"], batch["frames"]) and again["task"] == batch["task"]
    assert not torch.equal(sample_batch(episodes, cfg, spec, index=8)["frames"], batch["frames"])


def test_without_augmentation_a_sample_is_the_recorded_frames(episodes):
    cfg = batch_config(batch_size=16, rewind_prob=0.0, mismatch_prob=0.0, shift=0, blur_prob=0.0, noise=0.0)
    batch = sample_batch(episodes[:1], cfg, ProgressConfig(**TINY), index=0)
    e = episodes[0]
    for frames, first, p in zip(batch["frames"], batch["first_frames"], batch["progress"]):
        assert torch.equal(first, e.frames[:, 0].float() / 255)
        matches = [t for t in range(e.length)
                   if torch.equal(frames, e.frames[:, history_indices(t, 2, 2)].float() / 255)]
        assert matches and p in e.progress[matches]


def test_a_few_steps_lower_the_loss(episodes):
    torch.manual_seed(0)
    model = ProgressModel(**TINY)
    batch = sample_batch(episodes, batch_config(batch_size=16), model.spec, index=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before, first_metrics = progress_loss(model, batch)
    for _ in range(60):
        loss, _ = progress_loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, metrics = progress_loss(model, batch)
    assert after < 0.5 * before and metrics["progress_mae"] < 0.6 * first_metrics["progress_mae"]


def test_training_command_runs_and_resumes_exactly(tiny_dataset, tmp_path):
    args = dict(steps=4, batch_size=8, checkpoint_every=2, log_every=1, warmup_steps=1, lr=3e-3)
    def config(out, steps):
        return TrainProgressConfig(dataset=DatasetConfig(root=tiny_dataset, val_episodes=1),
                                   model=ProgressConfig(**SIZES), output_dir=out, **{**args, "steps": steps})
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(config(whole, 4))
    # The console command runs 2 steps and stops after its step-2 checkpoint, as if killed ...
    argv = ["progress", "--dataset.root", str(tiny_dataset), "--dataset.val_episodes", "1", "--output_dir", str(parts),
            *[x for k, v in {**args, "steps": 2}.items() for x in (f"--{k}", str(v))],
            *[x for k, v in SIZES.items() for x in (f"--model.{k}", str(list(v) if isinstance(v, tuple) else v))]]
    train_main(argv)
    train(config(parts, 4))  # ... and the same run with more steps resumes from it.
    def losses(out):
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses(whole) == losses(parts) and len(losses(whole)) == 4
    a, b = ProgressModel.from_pretrained(whole / "model"), ProgressModel.from_pretrained(parts / "model")
    assert a.spec.views == ("front", "wrist") and a.spec.image_size == 32
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))  # EMA weights too
    assert json.loads((parts / "train_config.json").read_text())["kind"] == "progress"
    assert sorted(p.name for p in (parts / "checkpoints").iterdir()) == ["step_0000002", "step_0000004"]


def test_training_refuses_a_folder_of_another_model(tiny_dataset, tmp_path):
    WorldModel(views=2, image_size=32, context=2, future=2, horizon=4, block_out_channels=(16, 32),
               norm_num_groups=8, cond_dim=32).save_pretrained(tmp_path / "model")
    cfg = TrainProgressConfig(dataset=DatasetConfig(root=tiny_dataset), output_dir=tmp_path, steps=1)
    with pytest.raises(ValueError, match="holds a WorldModel training, not a progress model's"):
        train(cfg)
