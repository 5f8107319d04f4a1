"""Frames to pictures: several clips side by side per time step, as an H.264 video or a PNG strip
of a few frames spread over time. It knows nothing of episodes or models.

Dimension legend: N frames of a clip, h x w image size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor


def side_by_side(clips: list[Tensor], labels: list[str], scale: int | None = None) -> list[np.ndarray]:
    """Frames (N_i, 3, h, w) uint8 of several clips as one (H, W, 3) uint8 image per time step:
    the clips left to right, each under its label, enlarged ``scale`` times (default: to about
    256 pixels wide) without smoothing. A clip shorter than the longest holds its last frame."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = clips[0].shape[-2:]
    scale = scale or max(1, 256 // w)
    n, gap, bar = max(c.shape[0] for c in clips), 4, 20
    width = len(clips) * w * scale + (len(clips) - 1) * gap
    header = Image.new("RGB", (width, bar), "white")
    draw, font = ImageDraw.Draw(header), ImageFont.load_default(size=14)
    for i, label in enumerate(labels):
        draw.text((i * (w * scale + gap) + 4, 2), label, fill="black", font=font)
    header = np.asarray(header)
    out = []
    for t in range(n):
        tiles = []
        for i, c in enumerate(clips):
            frame = c[min(t, c.shape[0] - 1)].permute(1, 2, 0).numpy()
            tiles.append(frame.repeat(scale, 0).repeat(scale, 1))
            if i < len(clips) - 1:
                tiles.append(np.full((h * scale, gap, 3), 255, np.uint8))
        out.append(np.concatenate([header, np.concatenate(tiles, 1)], 0))
    return out


def write_video(path: Path, clips: list[Tensor], labels: list[str], fps: int = 20) -> Path:
    """The clips (N_i, 3, h, w) uint8 side by side as an H.264 mp4 (``simulator.recording.write_mp4``)."""
    from simulator.recording import write_mp4

    return write_mp4(path, side_by_side(clips, labels), fps)


def save_strip(path: Path, clips: list[Tensor], labels: list[str], columns: int = 8) -> Path:
    """A PNG of ``columns`` frames spread over time, one row per clip (N_i, 3, h, w) uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(c.shape[0] for c in clips)
    times = np.linspace(0, n - 1, min(columns, n)).round().astype(int)
    fig, axes = plt.subplots(len(clips), len(times), figsize=(1.0 * len(times), 1.15 * len(clips)), squeeze=False)
    for r, (c, label) in enumerate(zip(clips, labels)):
        for k, t in enumerate(times):
            ax = axes[r, k]
            ax.imshow(c[min(t, c.shape[0] - 1)].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={t}", fontsize=8)
            if k == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
