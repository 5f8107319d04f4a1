"""What a collected dataset holds: episodes, success rate, failure modes, frames, and a strip of
frames from each view that a person can look at.

It reads only what lerobot's edit and merge tools keep: the columns (``episode.failure_mode`` is an
index into ``FAILURE_MODES``, which only ever grows at its end) and lerobot's ``meta/info.json``. The
strip is written beside the dataset folder (``<root>.reverie/summary_strip.png``), not inside it,
where lerobot's ``push_to_hub`` would upload it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from simulator import keys
from simulator.normalization import dataset_sidecar


@dataclass
class DatasetSummary:
    root: Path
    episodes: int
    frames: int
    fps: int
    views: list[str]
    success_rate: float
    failure_modes: dict[str, int]  # injected mode -> episodes
    success_by_mode: dict[str, float]
    strip: Path | None = None
    lengths: list[int] = field(default_factory=list)

    def to_text(self) -> str:
        lines = [
            f"dataset   {self.root}",
            f"episodes  {self.episodes}   frames {self.frames}   ({self.frames / max(self.fps, 1):.0f} s at {self.fps} fps)",
            f"views     {', '.join(self.views)}",
            f"success   {self.success_rate:.0%}",
            "failure modes (episodes, physics success):",
        ]
        for mode, n in self.failure_modes.items():
            lines.append(f"  {mode:<14} {n:>4}   {self.success_by_mode[mode]:.0%}")
        if self.strip is not None:
            lines.append(f"strip     {self.strip}")
        return "\n".join(lines)


def summarize(root: str | Path, strip_path: str | Path | None = "auto", video_backend: str = "pyav") -> DatasetSummary:
    """Reads the dataset at ``root`` with lerobot and summarises it; writes a PNG strip unless None
    ("auto": beside the dataset folder, ``<root>.reverie/summary_strip.png``)."""
    import pandas as pd
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from simulator.physics.experts import FAILURE_MODES

    root = Path(root)
    info = json.loads((root / "meta" / "info.json").read_text())
    modes = list(FAILURE_MODES)
    data = pd.concat(pd.read_parquet(p) for p in sorted((root / "data").rglob("*.parquet")))
    per_ep = data.groupby("episode_index").agg(success=(keys.EPISODE_SUCCESS, "first"),
                                               mode=(keys.FAILURE_MODE, "first"), length=("index", "size"))
    unknown = sorted({int(i) for i in per_ep["mode"]} - set(range(len(modes))))
    if unknown:
        raise ValueError(f"{root}: {keys.FAILURE_MODE} holds {unknown}, not indices into the failure modes {modes}")
    per_ep["mode"] = per_ep["mode"].map(lambda i: modes[int(i)])
    counts = Counter(per_ep["mode"])
    views = [keys.view_of(k) for k, f in info["features"].items() if f["dtype"] == "video"]
    summary = DatasetSummary(
        root=root,
        episodes=len(per_ep),
        frames=len(data),
        fps=info["fps"],
        views=views,
        success_rate=float(per_ep["success"].mean()) if len(per_ep) else 0.0,
        failure_modes={m: counts[m] for m in modes if counts[m]},
        success_by_mode={m: float(per_ep.loc[per_ep["mode"] == m, "success"].mean()) for m in modes if counts[m]},
        lengths=per_ep["length"].tolist(),
    )
    if strip_path is not None and len(per_ep):
        strip_path = dataset_sidecar(root) / "summary_strip.png" if strip_path == "auto" else Path(strip_path)
        ds = LeRobotDataset(info.get("repo_id", "reverie/local"), root=root, video_backend=video_backend)
        summary.strip = save_strip(ds, strip_path)
    return summary


def save_strip(ds, path: Path, episodes: int = 3, frames_per_episode: int = 8, scale: int = 2) -> Path:
    """A grid: one row per (episode, view), ``frames_per_episode`` evenly spaced frames per row."""
    from PIL import Image

    ep_meta = ds.meta.episodes
    rows = []
    for ep in range(min(episodes, ds.meta.total_episodes)):
        start, stop = int(ep_meta[ep]["dataset_from_index"]), int(ep_meta[ep]["dataset_to_index"])
        idx = np.linspace(start, stop - 1, frames_per_episode).round().astype(int)
        items = [ds[int(i)] for i in idx]
        for key in ds.meta.video_keys:
            row = [(it[key].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for it in items]
            rows.append(np.concatenate(row, axis=1))
    grid = np.concatenate(rows, axis=0)
    img = Image.fromarray(grid)
    img = img.resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
