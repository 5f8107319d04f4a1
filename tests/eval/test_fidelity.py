"""World-model fidelity evaluation: metrics against hand-computed values, and the whole rollout
pipeline against the one model whose answer is known (an untrained model is copy-last-frame)."""

import json
import subprocess
import sys

import pytest
import torch

from data.clips import DatasetConfig
from eval.fidelity import (EvalWorldModelConfig, correlation, evaluate, high_frequency_energy, per_frame_scores,
                           save_report)
from simulator.world_model import WorldModel

TINY = dict(views=2, image_size=32, context=2, future=2, horizon=4, block_out_channels=(16, 32), layers_per_block=1,
            norm_num_groups=8, cond_dim=32)


def test_scores_match_hand_computed_values():
    target = torch.rand(2, 3, 3, 16, 16) * 0.8
    psnr, ssim = per_frame_scores(target + 0.1, target)  # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    torch.testing.assert_close(psnr, torch.full((2, 3), 20.0), atol=1e-3, rtol=0)
    psnr_same, ssim_same = per_frame_scores(target, target)
    torch.testing.assert_close(ssim_same, torch.ones(2, 3), atol=1e-5, rtol=0)
    assert (psnr_same == 60.0).all()  # identical frames score the cap, not infinity
    assert (ssim < 1).all()


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    path = tmp_path_factory.mktemp("wm") / "model"
    WorldModel(**TINY).save_pretrained(path)
    return path


def config(model, root, out, **kw):
    kw = {"probe_steps": 0, "horizon_frames": 6, "batch_size": 4, **kw}
    return EvalWorldModelConfig(model=model, dataset=DatasetConfig(root=root, val_episodes=2),
                                starts=6, output_dir=out, **kw)


def test_untrained_model_scores_exactly_like_copy_last(untrained, tiny_dataset, tmp_path):
    result, examples = evaluate(config(untrained, tiny_dataset, tmp_path))
    assert result.horizon == [1, 2, 3, 4, 5, 6]
    # identical up to float round-off of the [0,1] -> [-1,1] -> [0,1] trip
    torch.testing.assert_close(torch.tensor(result.psnr), torch.tensor(result.psnr_copy_last), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.tensor(result.ssim), torch.tensor(result.ssim_copy_last), atol=1e-4, rtol=0)
    assert result.count == [6] * 6  # every start has its whole horizon inside its episode
    assert result.psnr[0] > result.psnr[-1]  # the scene moves away from the last context frame
    out = save_report(result, examples, config(untrained, tiny_dataset, tmp_path))
    assert json.loads((out / "fidelity.json").read_text())["result"]["count"] == result.count
    assert (out / "fidelity.png").stat().st_size > 5000 and (out / "strips.png").stat().st_size > 1000
    assert result.eef_error is None
    # copy-last repeats a real frame: the untrained model's frames are exactly as sharp as its
    for view in ("front", "wrist"):
        torch.testing.assert_close(torch.tensor(result.sharpness[view]), torch.tensor(result.sharpness_copy_last[view]),
                                   atol=1e-3, rtol=1e-3)
        assert len(result.sharpness[view]) == 6 and all(r > 0 for r in result.sharpness[view])
    assert "Sharpness (high-frequency energy" in result.to_markdown()
    # its state head starts as "the state does not change": the finger error is the real fingers'
    # distance from where they were at the last context frame
    from eval.fidelity import rollout_starts
    from simulator import keys

    cfg, spec = config(untrained, tiny_dataset, tmp_path), WorldModel.from_pretrained(untrained).spec
    clips = cfg.dataset.clips(cfg.dataset.split()[1], context=spec.context, horizon=3 * spec.horizon,
                              stride=spec.horizon // spec.future)
    real = lambda x: clips.normalizer.unnormalize(keys.STATE, x)[..., 6:8]  # finger_l, finger_r
    moved = torch.stack([(real(clips[i]["future_state"]) - real(clips[i]["context_state"][-1:])).abs().mean(-1)
                         for i in rollout_starts(clips, 6)]).mean(0)
    torch.testing.assert_close(torch.tensor(result.finger_error), moved, atol=1e-6, rtol=1e-4)
    assert "State head error (mm) at horizon 1: fingers" in result.to_markdown()
    # the end effector's distance from where it was at the last context frame, likewise
    eef = lambda x: clips.normalizer.unnormalize(keys.STATE, x)[..., :3]
    away = torch.stack([(eef(clips[i]["future_state"]) - eef(clips[i]["context_state"][-1:])).norm(dim=-1)
                        for i in rollout_starts(clips, 6)]).mean(0)
    torch.testing.assert_close(torch.tensor(result.eef_error_state), away, atol=1e-6, rtol=1e-4)
    assert away.max() > 1e-3 and f"end-effector distance {1000 * away[0]:.2f}" in result.to_markdown()
    # and its predicted height is the last context height: signed, minus the real arm's height
    z = lambda x: clips.normalizer.unnormalize(keys.STATE, x)[..., 2]  # eef_z
    lag = torch.stack([z(clips[i]["context_state"][-1:]) - z(clips[i]["future_state"])
                       for i in rollout_starts(clips, 6)]).mean(0)
    torch.testing.assert_close(torch.tensor(result.eef_z_state), lag, atol=1e-6, rtol=1e-4)
    assert lag.abs().max() > 1e-3 and result.eef_z_frames is None  # the arm moves; no probe, no frames' reading
    assert (f"End-effector height, imagined minus real (mm) at horizon 1: state head {1000 * lag[0]:+.1f}"
            in result.to_markdown())


def test_the_model_is_fed_and_read_with_the_statistics_it_was_trained_with(untrained, tiny_dataset, tmp_path):
    """On a dataset whose statistics differ from the ones saved beside the model, its states are
    normalised and read back with its own: a state head that raises the arm by one standard deviation
    raises it by one of the model's, not of the dataset's."""
    from simulator.env import NORMALIZATION_FILE
    from simulator.normalization import stats_path

    model = WorldModel.from_pretrained(untrained)
    with torch.no_grad():
        model.state_head[-1].bias.view(model.spec.future, -1)[:, 2] = 1.0  # eef_z, every predicted frame
    model.save_pretrained(tmp_path / "plain")  # no statistics beside it: the dataset's are used
    model.save_pretrained(tmp_path / "own")
    plain, _ = evaluate(config(tmp_path / "plain", tiny_dataset, tmp_path / "a"))  # (and the dataset's statistics cached)
    stats = json.loads(stats_path(tiny_dataset).read_text())
    features = stats.get("features", stats)
    features["observation.state"]["std"] = [3 * v for v in features["observation.state"]["std"]]
    (tmp_path / "own" / NORMALIZATION_FILE).write_text(json.dumps(features))
    own, _ = evaluate(config(tmp_path / "own", tiny_dataset, tmp_path / "b"))
    z_std = features["observation.state"]["std"][2] / 3
    chunk = torch.tensor([1.0, 1, 2, 2, 3, 3])  # each chunk of 2 frames raises it once more
    torch.testing.assert_close(torch.tensor(own.eef_z_state) - torch.tensor(plain.eef_z_state),
                               chunk * 2 * z_std, atol=1e-6, rtol=1e-4)


def test_high_frequency_energy_falls_with_blur_and_is_zero_on_flat_frames():
    frames = torch.rand(2, 4, 3, 16, 16)
    blurred = torch.nn.functional.avg_pool2d(frames.flatten(0, 1), 3, stride=1, padding=1,
                                             count_include_pad=False).view_as(frames)
    sharp, soft = high_frequency_energy(frames), high_frequency_energy(blurred)
    assert sharp.shape == (2, 4) and (soft < 0.5 * sharp).all()
    assert (high_frequency_energy(torch.full((3, 3, 8, 8), 0.7)) == 0).all()
    # one pixel raised by d in one channel of three: the Laplacian answers -4d there and d at its 4 neighbours
    spike = torch.zeros(3, 8, 8)
    spike[0, 4, 4] = 0.5
    assert high_frequency_energy(spike).item() == pytest.approx((16 + 4) * 0.25 / (3 * 6 * 6))


def test_probe_reads_imagined_and_real_frames(untrained, tiny_dataset, tmp_path):
    result, _ = evaluate(config(untrained, tiny_dataset, tmp_path, probe_steps=30, probe_train_episodes=2))
    assert len(result.eef_error) == len(result.eef_error_real) == 6
    assert all(0 < e < 1 for e in result.eef_error + result.eef_error_real)  # metres, finite
    assert (tmp_path / "probe" / "config.json").exists()
    assert "probe eef error imagined / real (mm)" in result.to_markdown()
    # An untrained model holds the last frame whatever the actions: its action sensitivity is 0.
    assert result.sensitivity == [0.0, 0.0, 0.0] and result.sensitivity_frames == 4  # 2 chunks of 2 frames
    assert all(-1 <= r <= 1 for r in result.sensitivity_real) and any(r != 0 for r in result.sensitivity_real)
    assert "Action sensitivity" in result.to_markdown()
    # the frames' height: the probe on the held frame minus on the real ones (signed, metres)
    assert len(result.eef_z_frames) == 6 and all(abs(v) < 1 for v in result.eef_z_frames)
    assert any(v != 0 for v in result.eef_z_frames) and "frames (probe)" in result.to_markdown()
    # Scores do not depend on how the starts are batched.
    rebatched, _ = evaluate(config(untrained, tiny_dataset, tmp_path / "b2", probe=tmp_path / "probe", batch_size=2))
    torch.testing.assert_close(torch.tensor(rebatched.sensitivity_real), torch.tensor(result.sensitivity_real))
    torch.testing.assert_close(torch.tensor(rebatched.eef_error_real), torch.tensor(result.eef_error_real))
    torch.testing.assert_close(torch.tensor(rebatched.eef_z_frames), torch.tensor(result.eef_z_frames))


def test_correlation_matches_hand_computed_values():
    x = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    y = torch.tensor([[2.0, 5.0], [4.0, 5.0 + 1e-9], [6.0, 5.0]])  # column 2 does not move
    torch.testing.assert_close(correlation(x, y), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(correlation(x, -y)[0], torch.tensor(-1.0))
    y2 = torch.tensor([[1.0], [3.0], [2.0]])  # r = 0.5 by hand
    torch.testing.assert_close(correlation(x[:, :1], y2), torch.tensor([0.5]))


def test_a_horizon_longer_than_every_episode_is_named(untrained, tiny_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"no held-out episode is longer than the horizon \(200 steps\)"):
        evaluate(config(untrained, tiny_dataset, tmp_path, horizon_frames=100))


def test_console_script_writes_the_report(untrained, tiny_dataset, tmp_path):
    cmd = [sys.executable, "-m", "eval.cli", "world_model", "--model", str(untrained), "--dataset.root", str(tiny_dataset),
           "--horizon_frames", "4", "--starts", "3", "--probe_steps", "0", "--output_dir", str(tmp_path / "r")]
    run = subprocess.run(cmd, check=False, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| horizon (frames) | PSNR model |" in run.stdout and (tmp_path / "r" / "fidelity.md").exists()
