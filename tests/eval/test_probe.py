"""State probe: learns to read the end-effector position from real frames better than guessing the
mean, round-trips through save/load, and names frames of the wrong shape."""

import pytest
import torch

from data.clips import ClipConfig, ClipDataset
from eval.probe import ProbeConfig, StateProbe, eef_error, load_frames, probe_error, train_probe
from simulator import keys


@pytest.fixture(scope="module")
def frames(tiny_dataset):
    clips = ClipDataset(root=tiny_dataset, config=ClipConfig(context=1, horizon=1), )
    return clips, load_frames(clips, episodes=[0, 1, 2, 3])


def test_loaded_frames_match_the_dataset(frames, tiny_dataset):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    clips, (images, targets) = frames
    ds = LeRobotDataset("r/l", root=tiny_dataset)
    assert images.dtype == torch.uint8 and images.shape[1:] == (2, 3, 32, 32) and len(images) == len(ds)
    i = len(ds) // 2
    assert torch.equal(images[i, 1].float(), (ds[i][keys.image_key("wrist")] * 255).round())
    torch.testing.assert_close(targets[i], torch.cat([ds[i][keys.STATE], ds[i][keys.ENV_STATE]]))


def test_probe_reads_the_end_effector_better_than_the_mean(frames, tmp_path):
    clips, (images, targets) = frames
    probe = train_probe(images, targets, ProbeConfig(steps=150, batch_size=32))
    learned = eef_error(probe_error(probe, images, targets))
    guess_mean = eef_error((targets - targets.mean(0)).abs().mean(0))
    assert learned < 0.6 * guess_mean, (learned, guess_mean)
    probe.save_pretrained(tmp_path / "probe")
    again = StateProbe.from_pretrained(tmp_path / "probe")
    assert torch.equal(again(images[:4].float() / 255), probe(images[:4].float() / 255))
    with pytest.raises(ValueError, match=r"frames must have shape \(N, V=2, 3, h, w\), got \(4, 1, 3, 32, 32\)"):
        probe(images[:4, :1].float())
