"""Frame decoding with a selectable backend: pyav, torchcodec (both through lerobot) or decord.

All three return the same uint8 frames for the H.264 videos that ``reverie-collect`` writes
(tested). torchcodec needs FFmpeg's shared libraries on the system (``make`` installs Debian's
when it runs as root); decord and pyav bring their own.
"""

from __future__ import annotations

from pathlib import Path

import torch

VIDEO_BACKENDS = ("pyav", "torchcodec", "decord")


def quiet_libav() -> None:
    """Keep FFmpeg to errors. lerobot restores FFmpeg's own logging after each encode, and at its
    default level libx264 prints ~20 lines of statistics for every episode written."""
    import av

    av.logging.set_level(av.logging.ERROR)
    av.logging.set_libav_level(av.logging.ERROR)  # the level FFmpeg's default callback uses


class CorruptVideoError(RuntimeError):
    """A video file that cannot be decoded (truncated, not a video, missing frames)."""


def decode_frames(path: str | Path, timestamps: list[float], backend: str = "pyav", tolerance_s: float = 1e-4) -> torch.Tensor:
    """Frames at ``timestamps`` (seconds) as uint8 (N, 3, h, w)."""
    if backend not in VIDEO_BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {VIDEO_BACKENDS}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} does not exist")
    try:
        if backend == "decord":
            return _decode_decord(path, timestamps, tolerance_s)
        from lerobot.datasets.video_utils import decode_video_frames

        return decode_video_frames(path, timestamps, tolerance_s, backend=backend, return_uint8=True)
    except (CorruptVideoError, FileNotFoundError):
        raise
    except ImportError as e:
        raise ImportError(f"video backend {backend!r} is not usable here: {e}") from e
    except Exception as e:  # each backend raises its own types for a broken file
        if backend == "torchcodec" and "libtorchcodec" in str(e):
            raise ImportError(f"torchcodec cannot load FFmpeg's libraries (install ffmpeg): {e}") from e
        raise CorruptVideoError(f"cannot decode {path} with {backend} at t={timestamps[:3]}...: {e}") from e


def _decode_decord(path: Path, timestamps: list[float], tolerance_s: float) -> torch.Tensor:
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
    except decord.DECORDError as e:
        raise CorruptVideoError(f"cannot open {path} with decord: {e}") from e
    starts = torch.from_numpy(reader.get_frame_timestamp(range(len(reader)))[:, 0]).double()
    query = torch.tensor(timestamps, dtype=torch.float64)
    dist, idx = (starts[None, :] - query[:, None]).abs().min(dim=1)
    if (dist > tolerance_s).any():
        bad = query[dist > tolerance_s].tolist()
        raise CorruptVideoError(
            f"{path}: no frame within {tolerance_s}s of timestamps {bad[:5]} (video has {len(reader)} frames, "
            f"last at {starts[-1].item():.3f}s); the file may be truncated"
        )
    frames = reader.get_batch(idx.tolist()).asnumpy()  # (N, h, w, 3)
    return torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
