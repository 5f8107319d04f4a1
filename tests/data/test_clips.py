"""ClipDataset: windows and padding masks at episode boundaries, agreement with lerobot's own
loader, statistics stored once, identical frames from every video backend, clear errors."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from data.clips import ClipConfig, ClipDataset
from data.video import CorruptVideoError, decode_frames
from simulator import keys
from simulator.normalization import stats_path

CFG = ClipConfig(context=3, horizon=4, stride=2)


@pytest.fixture(scope="module")
def clips(tiny_dataset):
    return ClipDataset(root=tiny_dataset, config=CFG)


def torchcodec_works() -> bool:
    try:
        import torchcodec.decoders  # noqa: F401  (loads FFmpeg's libraries)
        return True
    except Exception:
        return False


def test_item_shapes(clips):
    item = clips[10]
    assert item["context"].shape == (2, 3, 3, 32, 32) and item["future"].shape == (2, 2, 3, 32, 32)
    assert item["action"].shape == (4, 7) and item["context_state"].shape == (3, 8) and item["future_state"].shape == (2, 8)
    assert item["future_env_state"].shape == (2, keys.ENV_STATE_DIM) and item["future_progress"].shape == (2,)
    assert item["context"].dtype == torch.float32 and 0 <= item["context"].min() and item["context"].max() <= 1
    assert item["task"] == "pick up the red cube"


def test_episode_start_pads_context_with_the_first_frame(clips):
    start = clips.episode_range(1)[0]  # first frame of episode 1
    item = clips[start]
    assert item["frame_index"] == 0 and item["episode_index"] == 1
    assert item["context_mask"].tolist() == [False, False, True]
    assert torch.equal(item["context"][:, 0], item["context"][:, 2])
    second = clips[start + 2]  # with stride 2, frame 2 has frames 0 and 2 as real context
    assert second["context_mask"].tolist() == [False, True, True]
    assert torch.equal(second["context"][:, 1], item["context"][:, 2])


def test_episode_end_pads_future_and_actions(clips):
    first, end = clips.episode_range(0)
    last = clips[end - 1]
    assert last["future_mask"].tolist() == [False, False] and last["action_mask"].tolist() == [True, False, False, False]
    assert torch.all(last["action"][1:] == 0)
    assert torch.equal(last["future"][:, 0], last["context"][:, -1])  # padding repeats the last real frame
    near = clips[end - 3]  # frames end-3+2 = end-1 real, end+1 padded
    assert near["future_mask"].tolist() == [True, False] and near["action_mask"].tolist() == [True, True, True, False]


def test_state_windows_are_the_clips_without_their_frames(clips):
    """Read in one go for many rows (the state head's fit), across episode starts and ends."""
    first, end = clips.episode_range(0)
    rows = torch.tensor([first, first + 1, end - 3, end - 1, len(clips) - 1])
    windows = clips.state_windows(rows)
    for i, row in enumerate(rows.tolist()):
        item = clips[row]
        for key, value in windows.items():
            assert torch.equal(value[i], item[key]), (key, row)


def test_clips_agree_with_lerobot_loader(tiny_dataset, clips):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("reverie/lift", root=tiny_dataset)
    i = 20  # inside episode 0, far from its ends
    item = clips[i]
    for k in range(2):  # future frame k is frame i + 2(k+1)
        ref = (ds[i + 2 * (k + 1)][keys.image_key("wrist")] * 255).round()
        assert torch.equal((item["future"][1, k] * 255).round(), ref)
    raw = torch.stack([ds[i + h][keys.ACTION] for h in range(4)])
    torch.testing.assert_close(clips.normalizer.unnormalize(keys.ACTION, item["action"]), raw, atol=1e-5, rtol=0)
    torch.testing.assert_close(clips.normalizer.unnormalize(keys.STATE, item["context_state"][-1]), ds[i][keys.STATE],
                               atol=1e-5, rtol=0)


def test_statistics_are_computed_once_and_stored(tiny_dataset, clips):
    path = stats_path(tiny_dataset)
    stats = json.loads(path.read_text())
    df = pd.concat(pd.read_parquet(p) for p in (tiny_dataset / "data").rglob("*.parquet"))
    actions = np.stack(df[keys.ACTION].to_numpy())
    np.testing.assert_allclose(stats["features"][keys.ACTION]["mean"], actions.mean(0), atol=1e-6)
    np.testing.assert_allclose(stats["features"][keys.ACTION]["std"], actions.std(0), atol=1e-6)
    mtime = path.stat().st_mtime_ns
    ClipDataset(root=tiny_dataset, config=CFG)
    assert path.stat().st_mtime_ns == mtime  # reused, not recomputed
    subset = ClipDataset(root=tiny_dataset, config=CFG, episodes=[1, 3])
    assert set(subset.episode_of.tolist()) == {1, 3} and len(subset) < len(clips)
    assert subset.stats == clips.stats  # statistics describe the whole dataset


@pytest.mark.parametrize("backend", ["decord", "torchcodec"])
def test_backends_decode_identical_frames(clips, tiny_dataset, backend):
    if backend == "torchcodec" and not torchcodec_works():
        pytest.skip("torchcodec cannot load FFmpeg's shared libraries on this machine")
    other = ClipDataset(root=tiny_dataset, config=ClipConfig(context=3, horizon=4, stride=2, video_backend=backend))
    for i in (0, 17, len(clips) - 1):
        a, b = clips[i], other[i]
        assert torch.equal(a["context"], b["context"]) and torch.equal(a["future"], b["future"])


def test_hub_repo_id_resolves_through_the_lerobot_home(tiny_dataset, tmp_path, monkeypatch):
    home = tmp_path / "lerobot_home"
    shutil.copytree(tiny_dataset, home / "reverie" / "lift")
    import lerobot.datasets.lerobot_dataset as lds
    import lerobot.datasets.dataset_metadata as ldm

    monkeypatch.setattr(lds, "HF_LEROBOT_HOME", home, raising=False)
    monkeypatch.setattr(ldm, "HF_LEROBOT_HOME", home, raising=False)
    ds = ClipDataset(repo_id="reverie/lift", config=CFG)
    assert ds.root == home / "reverie" / "lift" and len(ds) == len(ClipDataset(root=tiny_dataset, config=CFG))


def test_missing_view_and_bad_config_are_named(tiny_dataset, tmp_path):
    with pytest.raises(KeyError, match=r"camera view\(s\) \['top'\] not in dataset"):
        ClipDataset(root=tiny_dataset, config=ClipConfig(views=("front", "top")))
    with pytest.raises(ValueError, match="stride must divide horizon"):
        ClipConfig(horizon=5, stride=2)
    with pytest.raises(ValueError, match="unknown self.video_backend='opencv'"):
        ClipConfig(video_backend="opencv")
    with pytest.raises(FileNotFoundError, match="is not a LeRobot dataset"):
        ClipDataset(root=tmp_path)


@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_truncated_video_is_a_clear_error(tiny_dataset, tmp_path, backend):
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    video = next((root / "videos" / keys.image_key("front")).rglob("*.mp4"))
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    ds = ClipDataset(root=root, config=ClipConfig(context=2, horizon=2, video_backend=backend))
    with pytest.raises(CorruptVideoError, match=str(video.name)):
        for i in range(len(ds) - 1, 0, -7):  # the end of the file is gone
            ds[i]


def test_decode_frames_names_unknown_backend_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown video backend 'gstreamer'"):
        decode_frames(tmp_path / "a.mp4", [0.0], backend="gstreamer")
    with pytest.raises(FileNotFoundError, match="a.mp4 does not exist"):
        decode_frames(tmp_path / "a.mp4", [0.0])


def test_statistics_are_recomputed_when_the_dataset_changed(tiny_dataset, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_dataset, root)
    path = stats_path(root)
    assert path.parent.parent == root.parent  # beside the dataset folder, not in it
    ClipDataset(root=root, config=CFG)  # writes the statistics
    fresh = json.loads(path.read_text())
    stale = {**fresh, "dataset_digest": "of the dataset before it changed"}
    stale["features"][keys.ACTION]["mean"] = [9.0] * 7
    path.write_text(json.dumps(stale))
    ds = ClipDataset(root=root, config=CFG)
    assert ds.stats[keys.ACTION]["mean"] != [9.0] * 7
    assert json.loads(path.read_text())["dataset_digest"] == fresh["dataset_digest"]


def test_frames_cached_in_memory_equal_decoded_frames(tiny_dataset, clips):
    cached = ClipDataset(root=tiny_dataset, config=ClipConfig(context=3, horizon=4, stride=2, cache_frames=True))
    for i in (0, 7, len(clips) - 1):
        a, b = clips[i], cached[i]
        assert torch.equal(a["context"], b["context"]) and torch.equal(a["future"], b["future"])


def test_a_training_subset_keeps_the_held_out_episodes(tiny_dataset):
    from data.clips import DatasetConfig

    train, held_out = DatasetConfig(root=tiny_dataset, val_episodes=1).split()
    fewer, same_held_out = DatasetConfig(root=tiny_dataset, val_episodes=1, train_episodes=2).split()
    assert fewer == train[:2] and same_held_out == held_out and len(train) > 2
    with pytest.raises(ValueError, match="train_episodes"):
        DatasetConfig(root=tiny_dataset, val_episodes=1, train_episodes=len(train) + 1).split()
