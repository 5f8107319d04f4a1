"""Checks that a LeRobotDataset is whole and that the numbers a training reads are the ones recorded.

- ``check_local_dataset``: a local root holds a LeRobotDataset and every data parquet file that
  ``meta/episodes`` names, each with a readable footer and the rows of its episodes. lerobot turns
  to the hub for any piece missing from a local root; here a missing piece is an error naming it.
- ``check_values``: every loaded value of action, state, object state and progress is finite and
  inside the per-episode min and max that lerobot recorded when it wrote the episode
  (``stats/<feature>/min|max`` in ``meta/episodes``); vectorised over the already loaded columns.
- ``check_stats``: normalisation statistics are finite and agree with the recorded ranges.
- ``keys.common_env_state``: object state in the common layout of every task (``keys.ENV_STATE_NAMES``);
  a dataset recorded before it (one pose per task object: 7 values for Lift) is zero-padded, which
  is exact, since its objects' poses are already the first slots.

Parquet stores no checksum that pyarrow verifies, so bytes overwritten inside a data file decode
to garbage silently; the recorded ranges are what catches them. A corruption that stays inside
its episode's range passes unseen. Videos are not decoded here (``data.video`` names a video that
does not decode when it is read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from simulator import keys
from simulator.normalization import CorruptDatasetError, check_finite

CHECKED = (keys.ACTION, keys.STATE, keys.ENV_STATE, keys.PROGRESS)
LEROBOT_META = ("meta/info.json", "meta/tasks.parquet", "meta/episodes")
UNREADABLE = (pa.ArrowException, OSError)  # what pyarrow raises for a truncated or garbled file
REL_TOL = 1e-6  # recorded ranges are float64 stats of values the parquet keeps as float32


@dataclass
class EpisodeRecord:
    """What lerobot recorded for each episode when it wrote it (``meta/episodes``)."""

    root: Path
    files: dict[int, Path]  # episode -> its data parquet file
    lengths: dict[int, int]  # episode -> frames
    ranges: dict[str, tuple[np.ndarray, np.ndarray]]  # feature -> (E, d) min and max, row = episode index

    @classmethod
    def read(cls, root: str | Path) -> EpisodeRecord:
        root = Path(root)
        info = json.loads((root / "meta/info.json").read_text())
        data_path = info["data_path"]
        # Only the features the dataset declares: lerobot's remove_feature then merge keeps the
        # removed feature's per-episode stats in meta/episodes (a 7-value and a 14-value layout side by side).
        checked = [k for k in CHECKED if k in info["features"]]
        wanted = ["episode_index", "length", "data/chunk_index", "data/file_index",
                  *(f"stats/{k}/{s}" for k in checked for s in ("min", "max"))]
        tables = []
        for path in sorted((root / "meta/episodes").glob("*/*.parquet")):
            try:
                names = pq.read_schema(path).names
                tables.append(pq.read_table(path, columns=[c for c in wanted if c in names]).to_pydict())
            except UNREADABLE as e:
                raise _unreadable(path, e) from e
        rows = {c: [v for t in tables for v in t.get(c, [None] * len(t["episode_index"]))] for c in wanted}
        episodes = rows["episode_index"]
        files = {ep: root / data_path.format(chunk_index=c, file_index=f)
                 for ep, c, f in zip(episodes, rows["data/chunk_index"], rows["data/file_index"])}
        ranges = {}
        for key in checked:
            lo, hi = rows[f"stats/{key}/min"], rows[f"stats/{key}/max"]
            if any(v is None for v in lo + hi):
                continue  # not recorded for every episode: only finiteness is checked
            ranges[key] = tuple(_by_episode(episodes, np.asarray(v, np.float64).reshape(len(v), -1), fill)
                                for v, fill in ((lo, -np.inf), (hi, np.inf)))
            if key == keys.ENV_STATE:  # the padded slots are 0 in every episode
                ranges[key] = tuple(keys.common_env_state(r, root) for r in ranges[key])
        return cls(root, files, dict(zip(episodes, rows["length"])), ranges)


def _unreadable(path: Path, error: Exception) -> CorruptDatasetError:
    reason = " ".join(str(error).split())
    return CorruptDatasetError(f"{path} is not a readable parquet file ({reason}): restore or re-collect it")


def _by_episode(episodes: list[int], values: np.ndarray, fill: float) -> np.ndarray:
    out = np.full((max(episodes, default=-1) + 1, values.shape[1]), fill)
    out[episodes] = values
    return out


def check_local_dataset(root: str | Path) -> EpisodeRecord:
    """The record of a local dataset whose metadata and data files are all there and readable."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a LeRobot dataset: the folder does not exist")
    missing = [p for p in LEROBOT_META if not (root / p).exists()]
    if missing:
        raise FileNotFoundError(f"{root} is not a LeRobot dataset: it has no {', '.join(missing)}")
    record = EpisodeRecord.read(root)
    rows: dict[Path, int] = {}
    for ep, path in record.files.items():
        rows[path] = rows.get(path, 0) + record.lengths[ep]
    for path in sorted(set(rows) | set((root / "data").glob("*/*.parquet"))):
        if not path.is_file():
            episodes = sorted(ep for ep, p in record.files.items() if p == path)
            raise FileNotFoundError(f"{path} is missing: meta/episodes names it as the data of episodes {episodes}")
        try:
            n = pq.read_metadata(path).num_rows
        except UNREADABLE as e:
            raise _unreadable(path, e) from e
        if n != rows.get(path, 0):
            raise CorruptDatasetError(f"{path} has {n} rows but meta/episodes records {rows.get(path, 0)} for it")
    return record


def name_unreadable_file(root: str | Path, error: Exception) -> None:
    """After ``error`` while loading the dataset at ``root``: raise an error naming the data file that
    pyarrow cannot read (the datasets library reports a generation error that names none)."""
    for path in sorted((Path(root) / "data").glob("*/*.parquet")):
        try:
            pq.read_table(path)
        except UNREADABLE as e:
            raise _unreadable(path, e) from error


def check_values(record: EpisodeRecord, columns: dict[str, torch.Tensor], episode_of: torch.Tensor,
                 frame_of: torch.Tensor) -> None:
    """``columns`` {key: (N, d)} of rows (N,) ``episode_of`` / ``frame_of``: finite and inside the
    recorded range of their episode, else an error naming the file, the first bad row and the feature."""
    for key, x in columns.items():
        bad = ~torch.isfinite(x)
        lo = hi = None
        if key in record.ranges and len(x):
            lo, hi = _bounds(record.ranges[key], episode_of)
            tol = REL_TOL * (1 + torch.maximum(lo.abs(), hi.abs()).nan_to_num(posinf=0))
            bad |= (x < lo - tol) | (x > hi + tol)
        if not bad.any():
            continue
        row, dim = (int(i) for i in bad.nonzero()[0])
        ep, value = int(episode_of[row]), float(x[row, dim])
        problem = "is not finite" if not np.isfinite(value) else (
            f"is outside [{float(lo[row, dim]):.6g}, {float(hi[row, dim]):.6g}], the range lerobot recorded "
            f"for episode {ep} when it wrote it")
        raise CorruptDatasetError(
            f"{record.files.get(ep, record.root)}: episode {ep}, frame {int(frame_of[row])}: {key}[{dim}] = "
            f"{value:.6g} {problem} ({int(bad.any(1).sum())} corrupt rows of {key}): the file is corrupt; "
            f"restore or re-collect it")


def _bounds(ranges: tuple[np.ndarray, np.ndarray], episode_of: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d) recorded min and max of each row's episode (unbounded for an episode never recorded)."""
    n = max(len(ranges[0]), int(episode_of.max()) + 1)
    return tuple(torch.from_numpy(np.pad(r, ((0, n - len(r)), (0, 0)), constant_values=fill))[episode_of]
                 for r, fill in zip(ranges, (-np.inf, np.inf)))


def check_stats(features: dict[str, dict[str, list[float]]], source: str | Path,
                record: EpisodeRecord | None = None) -> None:
    """Statistics {key: {mean, std, min, max}} from ``source``: finite, and, where ``record`` has the
    key's per-episode ranges, inside the dataset's recorded range."""
    check_finite(features, source)
    for key, stats in features.items():
        if record is None or key not in record.ranges:
            continue
        lo, hi = record.ranges[key][0].min(0), record.ranges[key][1].max(0)
        tol = REL_TOL * (1 + np.maximum(np.abs(lo), np.abs(hi)))
        limits = {"min": (lo, hi), "max": (lo, hi), "mean": (lo, hi), "std": (np.zeros_like(lo), hi - lo)}
        for name, (low, high) in limits.items():
            v = np.asarray(stats.get(name, low), np.float64)
            outside = (v < low - tol) | (v > high + tol)
            if outside.any():
                i = int(np.flatnonzero(outside)[0])
                raise CorruptDatasetError(
                    f"{source}: {key}[{i}] {name} = {v[i]:.6g} cannot come from values in [{lo[i]:.6g}, {hi[i]:.6g}], "
                    f"the range lerobot recorded for the dataset's episodes: the statistics were computed from "
                    f"corrupt or other data; delete it to recompute them")
