"""The demo's held-out episodes, real and as the world model re-imagines them, and the progress
model's reading of both: the only things the report computes. Loading and re-generating go
through ``data.episodes`` (its ``held_out_episodes`` and ``regenerate``), the project's one
re-generation entry point; this module only fits them to a demo folder.

Dimension legend: V views, N frames of an episode, h x w image size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from data.clips import LOCAL_REPO_ID, DatasetConfig
from data.episodes import Episode, held_out_count
from data.episodes import held_out_episodes as load_held_out
from data.episodes import regenerate as fill_regenerated
from simulator import keys


def _metadata(root: Path):
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

    return LeRobotDatasetMetadata(LOCAL_REPO_ID, root=root)


def demo_dataset(root: Path) -> DatasetConfig:
    """The demo's dataset with the split every demo stage used (data.episodes.held_out_count)."""
    return DatasetConfig(root=Path(root), val_episodes=held_out_count(_metadata(root).total_episodes))


def held_out_episodes(root: Path, n: int, views: tuple[str, ...] | None = None
                      ) -> tuple[list[Episode], tuple[str, ...], int]:
    """The first ``n`` held-out episodes of the demo's dataset at ``root`` (frames, actions, states,
    labels), the views in order (None: every view of the dataset), and the dataset's frame rate."""
    meta = _metadata(root)
    views = tuple(views) if views is not None else tuple(keys.view_of(k) for k in meta.video_keys)
    return load_held_out(demo_dataset(root), views, n), views, int(meta.fps)


def regenerate(world_model: Path, root: Path, episodes: list[Episode]) -> list[Tensor]:
    """Each episode re-imagined open loop from its first frame with its recorded actions, by the
    world model's deterministic prediction on the CPU (``data.episodes.regenerate``, which also
    fills each ``Episode.regenerated``): (V, N, 3, h, w) uint8 each. ``root``: the dataset whose
    normalisation statistics the world model was trained with."""
    fill_regenerated(episodes, world_model, root, device="cpu")
    return [e.regenerated for e in episodes]


def progress_curves(progress: Path, episodes: list, imagined: dict[str, list[Tensor]]) -> dict[str, list[np.ndarray]]:
    """The progress model's reading of every frame: {"real": [(N,) per episode], name: [...] for
    each list of imagined episodes (V, N', 3, h, w)}. Imagined frames are read with the real
    episode's first frames, where they started from."""
    from simulator.progress import ProgressModel

    model = ProgressModel.from_pretrained(progress).eval()

    def read(frames: Tensor, e) -> np.ndarray:
        return model.score_episode(frames, e.task, first_frames=e.frames[:, 0]).progress.numpy()

    curves = {"real": [read(e.frames, e) for e in episodes]}
    for name, runs in imagined.items():
        curves[name] = [read(frames, e) for frames, e in zip(runs, episodes)]
    return curves


def plot_progress_curves(path: Path, episodes: list, curves: dict[str, list[np.ndarray]]) -> Path:
    """One panel per episode: the predicted progress of each reading, and the dataset's label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(1, min(3, len(episodes)))
    rows = -(-len(episodes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for i, (ax, e) in enumerate(zip(axes.flat, episodes)):
        for (name, values), style in zip(curves.items(), ("-", "--", "-.", ":")):
            ax.plot(np.arange(len(values[i])), values[i], style, label=f"predicted, {name} frames")
        ax.plot(np.arange(e.length), e.progress.numpy(), ":", color="gray", label="label (real)")
        ax.set(ylim=(-0.05, 1.05), xlabel="frame", ylabel="progress",
               title=f"episode {e.index} ({'success' if e.success else 'failure'})")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(episodes):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
