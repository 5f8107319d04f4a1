"""Value-quality metrics against hand-computed values, the value gap against the model's own
per-episode scores, and ``reverie-eval progress`` end to end on the tiny dataset."""

import json

import numpy as np
import pytest
import torch

from eval.cli import main as eval_main
from eval.value import (
    EpisodeScores,
    spearman_with_time,
    success_auroc,
    summarize,
    value_gap,
    value_order_correlation,
)
from simulator.progress import ProgressModel

TINY = dict(views=("front", "wrist"), image_size=32, history=2, history_stride=2, channels=(8, 16), norm_num_groups=4,
            pool_size=2, width=32, task_buckets=64, ensemble=3, head_width=16)


def test_spearman_with_time_matches_hand_computed_ranks():
    assert spearman_with_time([0.0, 0.1, 0.5, 0.9]) == pytest.approx(1.0, abs=1e-5)
    assert spearman_with_time([0.9, 0.5, 0.1, 0.0]) == pytest.approx(-1.0, abs=1e-5)
    # ranks 1 3 2 4: sum d^2 = 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman_with_time([0.1, 0.3, 0.2, 0.4]) == pytest.approx(0.8, abs=1e-5)
    # ties share their mean rank: ranks 1.5 1.5 3 against 1 2 3 correlate at sqrt(3)/2
    assert spearman_with_time([0.2, 0.2, 0.7]) == pytest.approx(np.sqrt(3) / 2, abs=1e-5)
    assert spearman_with_time([0.5, 0.5, 0.5]) == 0.0  # a constant value says nothing about order
    with pytest.raises(ValueError, match="at least 2 frames"):
        spearman_with_time([0.3])


def test_value_order_correlation_averages_episodes():
    episodes = [torch.tensor([0.0, 1.0, 2.0, 3.0]), [3.0, 2.0, 1.0, 0.0], np.array([0.1, 0.3, 0.2, 0.4])]
    assert value_order_correlation(episodes) == pytest.approx((1 - 1 + 0.8) / 3, abs=1e-5)
    with pytest.raises(ValueError, match="at least one episode"):
        value_order_correlation([])


def test_success_auroc_matches_hand_computed_pairs():
    # successes 0.35, 0.8 against failures 0.1, 0.4: 3 of the 4 pairs are ordered right
    assert success_auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert success_auroc([0.5, 0.5], [False, True]) == pytest.approx(0.5)  # a tie counts half
    assert success_auroc(torch.tensor([0.9, 0.2, 0.7]), torch.tensor([True, False, True])) == pytest.approx(1.0)
    assert success_auroc([0.9, 0.2, 0.7], [0, 1, 0]) == pytest.approx(0.0)
    assert success_auroc([-2.0, 1.0, 0.5, 3.0], [0, 0, 1, 1]) == pytest.approx(0.75)  # logits rank the same
    with pytest.raises(ValueError, match="both classes"):
        success_auroc([0.2, 0.9], [1, 1])
    with pytest.raises(ValueError, match="same length"):
        success_auroc([0.2, 0.9, 0.1], [0, 1])


def scores(progress, label, success_prob, mismatch=0.0, success=True):
    n = len(progress)
    return EpisodeScores(episode=0, success=success, progress=progress, label=label, success_prob=success_prob,
                         uncertainty=[0.1] * n, mismatch_progress=[mismatch] * n)


def test_summary_matches_hand_computed_values():
    episodes = [
        # solved at frame 3: VOC over frames 0-3 (ranks 1 3 2 4: 0.8); over all 5 (ranks 2 4 3 5 1: -0.1)
        scores([0.1, 0.3, 0.2, 0.9, 0.05], [0.2, 0.4, 0.6, 1.0, 1.0], [0.0, 0.0, 0.0, 0.5, 0.9], mismatch=0.1),
        scores([0.0, 0.5, 1.0], [1 / 3, 2 / 3, 1.0], [0.0, 0.0, 0.6]),  # VOC 1 either way
        scores([0.2, 0.4], [0.0, 1 / 3], [0.1, 0.7], success=False),
        scores([0.3, 0.1], [0.0, 0.0], [0.2, 0.3], success=False),
    ]
    result = summarize(episodes)
    assert (result.episodes, result.successes) == (4, 2)
    assert result.voc == pytest.approx((0.8 + 1.0) / 2, abs=1e-5)
    assert result.voc_all_frames == pytest.approx((-0.1 + 1.0) / 2, abs=1e-5)
    assert result.voc_per_episode == pytest.approx([0.8, 1.0], abs=1e-5)
    # last-frame success probability: 0.9, 0.6 against 0.7, 0.3 -> 3 of 4 pairs;
    # last-frame progress: 0.05, 1.0 against 0.4, 0.1 -> 2 of 4
    assert result.auroc_success_prob == pytest.approx(0.75)
    assert result.auroc_progress == pytest.approx(0.5)
    errors = [0.1, 0.1, 0.4, 0.1, 0.95] + [1 / 3, 1 / 6, 0.0] + [0.2, 1 / 15] + [0.3, 0.1]
    assert result.progress_mae == pytest.approx(np.mean(errors))
    assert result.mismatch_progress == pytest.approx(0.5 / 12)
    assert result.uncertainty == pytest.approx(0.1)
    only_successes = summarize(episodes[:2])
    assert only_successes.auroc_success_prob is None and only_successes.voc == result.voc
    assert "| VOC, held-out successes (to the first solved frame; 2 episodes) | 0.900 |" in result.to_markdown()


def test_value_gap_compares_the_model_on_real_and_regenerated_frames():
    torch.manual_seed(0)
    model = ProgressModel(**TINY).eval()
    gen = torch.Generator().manual_seed(1)
    real = [torch.rand(2, n, 3, 32, 32, generator=gen) for n in (5, 3)]
    same = value_gap(model, real, [r.clone() for r in real], "pick up the red cube", labels=[True, False])
    assert same.frames == 8 and same.progress_abs == 0 and same.success_abs == 0 and same.per_episode_abs == [0, 0]
    assert same.voc_real == same.voc_regenerated and same.auroc_real == same.auroc_regenerated
    regen = [(r + 0.2 * torch.randn(r.shape, generator=gen)).clamp(0, 1) for r in real]
    gap = value_gap(model, real, regen, ["pick up the red cube"] * 2, labels=[True, False])
    # the same numbers from the model's own per-episode scores, the re-generations read with the real first frames
    a = [model.score_episode(r, "pick up the red cube") for r in real]
    b = [model.score_episode(g, "pick up the red cube", first_frames=r[:, 0]) for r, g in zip(real, regen)]
    diff = torch.cat([x.progress - y.progress for x, y in zip(a, b)])
    assert gap.progress_abs == pytest.approx(float(diff.abs().mean()), abs=1e-6) and gap.progress_abs > 0
    assert gap.progress_signed == pytest.approx(float(diff.mean()), abs=1e-6)
    assert gap.per_episode_abs == pytest.approx([float((x.progress - y.progress).abs().mean()) for x, y in zip(a, b)])
    assert gap.voc_real == pytest.approx(spearman_with_time(a[0].progress), abs=1e-6)  # the one labelled success
    assert gap.auroc_real == success_auroc([a[0].success_prob[-1], a[1].success_prob[-1]], [1, 0])
    with pytest.raises(ValueError, match="episode 1: real frames"):
        value_gap(model, real, [regen[0], regen[1][:, :2]], "pick up the red cube")
    with pytest.raises(ValueError, match="as many real episodes"):
        value_gap(model, real, regen[:1], "pick up the red cube")


def test_eval_command_scores_held_out_episodes_and_writes_the_report(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    ProgressModel(**TINY).save_pretrained(tmp_path / "model")
    out = tmp_path / "report"
    eval_main(["progress", "--model", str(tmp_path / "model"), "--dataset.root", str(tiny_dataset),
               "--dataset.val_episodes", "3", "--output_dir", str(out), "--plot_episodes", "3"])
    report = json.loads((out / "value.json").read_text())
    episodes = [EpisodeScores(**e) for e in report["episodes"]]
    assert [e.episode for e in episodes] == [1, 2, 3]  # the held-out episodes of the split
    assert {e.success for e in episodes} == {True, False}
    assert report["result"] == json.loads(json.dumps(summarize(episodes).__dict__))
    assert all(len(e.progress) == len(e.label) == len(e.success_prob) > 10 for e in episodes)
    assert -1 <= report["result"]["voc"] <= 1 and 0 <= report["result"]["auroc_success_prob"] <= 1
    assert "success AUROC" in (out / "value.md").read_text()
    assert (out / "value.png").stat().st_size > 5000
