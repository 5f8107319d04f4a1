"""Datasets of different tasks merge with lerobot's own tool, and what the project reads from a
dataset survives lerobot's edits: every task records the object state in one layout, the
per-episode labels are columns, and Reverie's own files (commit state, statistics, summary strip)
stay out of the dataset folder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.collect import CollectConfig, collect
from simulator import keys
from simulator.normalization import dataset_sidecar, stats_path
from simulator.physics import FAILURE_MODES

# The views and image size of tests.conftest.TINY (lift): lerobot merges only equal features.
STACK = {"task": "stack", "episodes": 2, "height": 32, "width": 32, "max_steps": 12, "commit_every": 1}


def lerobot_edit_dataset(*args: str) -> None:
    """lerobot's console script, as a LeRobot user runs it."""
    script = Path(sys.executable).parent / "lerobot-edit-dataset"
    run = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]


def table(root: Path) -> pd.DataFrame:
    return pd.concat(pd.read_parquet(p) for p in sorted((root / "data").rglob("*.parquet"))).reset_index(drop=True)


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def stack_dataset(tmp_path_factory) -> Path:
    return collect(CollectConfig(root=tmp_path_factory.mktemp("stack") / "stack", **STACK))


def test_a_finished_collection_holds_only_lerobots_files_and_its_provenance(stack_dataset):
    # no commit state left (images/ is lerobot's frame buffer, which its hub upload skips)
    assert {p.name for p in stack_dataset.iterdir()} <= {"data", "meta", "videos", "images"}
    meta = {f for f in files(stack_dataset) if f.startswith("meta/") and not f.startswith("meta/episodes/")}
    assert meta == {"meta/info.json", "meta/stats.json", "meta/tasks.parquet", "meta/reverie.json"}


def test_lift_and_stack_merge_with_lerobot_edit_dataset_and_train_a_world_model(tiny_dataset, stack_dataset, tmp_path):
    from data.clips import ClipConfig, ClipDataset
    from tests.test_train_world_model import config
    from train.world_model import train

    merged = tmp_path / "merged"
    lerobot_edit_dataset("--new_repo_id", "local/merged", "--new_root", str(merged), "--operation.type", "merge",
                         "--operation.repo_ids", "['local/lift', 'local/stack']",
                         "--operation.roots", f"['{tiny_dataset}', '{stack_dataset}']")
    info = json.loads((merged / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 4 + STACK["episodes"]
    assert info["features"][keys.ENV_STATE]["names"] == keys.ENV_STATE_NAMES
    rows = table(merged)
    env_state = np.stack(rows[keys.ENV_STATE].to_numpy())
    lift, stack = (rows["episode_index"] < 4).to_numpy(), (rows["episode_index"] >= 4).to_numpy()
    assert (env_state[lift, 7:] == 0).all() and (env_state[lift, 3:7] != 0).any(1).all()  # the cube, then an empty slot
    assert (env_state[stack, 3:7] != 0).any(1).all() and (env_state[stack, 10:14] != 0).any(1).all()  # both cubes
    # each episode keeps the seed it was collected from (both collections start at seed 0)
    assert rows.groupby("episode_index")[keys.SEED].first().tolist() == [0, 1, 2, 3, 0, 1]

    clips = ClipDataset(root=merged, config=ClipConfig(context=1, horizon=1))
    assert set(clips.tasks.values()) == {"pick up the red cube", "stack the red cube on the green cube"}
    assert len(clips.stats[keys.ENV_STATE]["mean"]) == keys.ENV_STATE_DIM
    out = tmp_path / "wm"
    train(config(merged, out, steps=2))
    losses = [json.loads(r)["loss"] for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert (out / "model" / "config.json").is_file()


def test_a_dataset_lerobot_deleted_episodes_from_keeps_seeds_failure_modes_and_summary(tiny_dataset, tmp_path):
    from data.clips import ClipConfig, ClipDataset
    from data.episodes import episode_seeds
    from data.summary import summarize

    edited = tmp_path / "edited"
    lerobot_edit_dataset("--repo_id", "local/lift", "--root", str(tiny_dataset), "--new_repo_id", "local/edited",
                         "--new_root", str(edited), "--operation.type", "delete_episodes",
                         "--operation.episode_indices", "[0]")
    assert not (edited / "meta" / "reverie.json").exists()  # lerobot's tools drop our meta/ file
    before = files(edited)
    assert episode_seeds(edited, [0, 1, 2]) == episode_seeds(tiny_dataset, [1, 2, 3]) == [1, 2, 3]

    whole, summary = summarize(tiny_dataset, strip_path=None), summarize(edited)
    assert summary.episodes == 3 and summary.lengths == whole.lengths[1:]
    removed_mode = table(tiny_dataset).groupby("episode_index")[keys.FAILURE_MODE].first().iloc[0]
    expected = dict(whole.failure_modes)
    expected[FAILURE_MODES[int(removed_mode)]] -= 1
    assert summary.failure_modes == {m: n for m, n in expected.items() if n}
    assert summary.strip == dataset_sidecar(edited) / "summary_strip.png" and summary.strip.is_file()

    clips = ClipDataset(root=edited, config=ClipConfig(context=1, horizon=1))
    assert stats_path(edited).is_file() and clips.stats[keys.ACTION]["mean"] != ClipDataset(
        root=tiny_dataset, config=ClipConfig(context=1, horizon=1)).stats[keys.ACTION]["mean"]
    assert files(edited) == before  # the summary strip and the statistics went beside the folder


def as_recorded_before_the_common_layout(source: Path, root: Path) -> Path:
    """A copy of a Lift dataset as reverie-collect wrote it before the common layout: the cube's 7
    values alone, in the data, lerobot's per-episode statistics, meta/stats.json and meta/info.json."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(source, root)
    for path in (root / "data").rglob("*.parquet"):
        t = pq.read_table(path)
        values = np.stack(t.column(keys.ENV_STATE).to_pylist())[:, :7].astype(np.float32)
        column = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), pa.float32()), 7)
        pq.write_table(t.set_column(t.schema.get_field_index(keys.ENV_STATE), keys.ENV_STATE, column), path)
    for path in (root / "meta" / "episodes").rglob("*.parquet"):
        t = pq.read_table(path)
        for name in [c for c in t.column_names if c.startswith(f"stats/{keys.ENV_STATE}/") and not c.endswith("/count")]:
            t = t.set_column(t.schema.get_field_index(name), name, pa.array([v[:7] for v in t.column(name).to_pylist()]))
        pq.write_table(t, path)
    stats = json.loads((root / "meta" / "stats.json").read_text())
    stats[keys.ENV_STATE] = {k: v if k == "count" else v[:7] for k, v in stats[keys.ENV_STATE].items()}
    (root / "meta" / "stats.json").write_text(json.dumps(stats))
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"][keys.ENV_STATE] |= {"shape": [7], "names": [f"cube_{c}" for c in keys.POSE_NAMES]}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    return root


def test_a_dataset_of_the_old_seven_value_layout_loads_in_the_common_layout(tiny_dataset, tmp_path):
    """Its cube fills the first slot already, so zero-padding is exact: the columns, the checked
    per-episode ranges and the statistics are those of the same episodes recorded today."""
    from data.clips import ClipConfig, ClipDataset
    from simulator.keys import common_env_state

    old = as_recorded_before_the_common_layout(tiny_dataset, tmp_path / "old")
    assert np.stack(table(old)[keys.ENV_STATE].to_numpy()).shape[1] == 7
    cfg = ClipConfig(context=1, horizon=1)
    then, now = ClipDataset(root=old, config=cfg), ClipDataset(root=tiny_dataset, config=cfg)
    assert then.columns[keys.ENV_STATE].shape[1] == keys.ENV_STATE_DIM
    assert (then.columns[keys.ENV_STATE] == now.columns[keys.ENV_STATE]).all()
    np.testing.assert_allclose(then.stats[keys.ENV_STATE]["mean"], now.stats[keys.ENV_STATE]["mean"], atol=1e-6)
    with pytest.raises(ValueError, match=r"has 9 values.*re-collect it with reverie-collect"):
        common_env_state(np.zeros((3, 9)), old)


def test_datasets_of_both_layouts_merge_once_the_object_state_is_removed(tiny_dataset, tmp_path):
    """How a user merges an old-layout dataset with a new one: lerobot's remove_feature, then merge.
    lerobot keeps the removed feature's per-episode statistics in meta/episodes (7 values beside
    14); the project reads only the features the merged dataset declares."""
    from data.clips import ClipConfig, ClipDataset

    old = as_recorded_before_the_common_layout(tiny_dataset, tmp_path / "old")
    bare = {}
    for name, root in (("old", old), ("new", tiny_dataset)):
        bare[name] = tmp_path / f"{name}_bare"
        lerobot_edit_dataset("--repo_id", f"local/{name}", "--root", str(root), "--new_repo_id", f"local/{name}_bare",
                             "--new_root", str(bare[name]), "--operation.type", "remove_feature",
                             "--operation.feature_names", f"['{keys.ENV_STATE}']")
    merged = tmp_path / "merged"
    lerobot_edit_dataset("--new_repo_id", "local/merged", "--new_root", str(merged), "--operation.type", "merge",
                         "--operation.repo_ids", "['local/old_bare', 'local/new_bare']",
                         "--operation.roots", f"['{bare['old']}', '{bare['new']}']")
    assert keys.ENV_STATE not in json.loads((merged / "meta" / "info.json").read_text())["features"]
    clips = ClipDataset(root=merged, config=ClipConfig(context=1, horizon=1))
    assert len(clips.episodes) == 8 and keys.ENV_STATE not in clips.stats
