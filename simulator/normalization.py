"""Normalisation statistics of actions and states: where a dataset's are cached, their check, and
the ``Normalizer`` that applies them.

The statistics are computed from a dataset (``data.clips``) and travel with every model trained
on it; the world model and the imagined env read them back here, which is why they live below
``data/``. This module does not compute them, nor check them against a dataset's recorded
ranges (``data.validate.check_stats``).

Where: Reverie's own files about a dataset (these statistics, the summary strip) live in a folder
beside the dataset, ``<root>.reverie/``, not inside it. Inside, lerobot's ``push_to_hub`` would
upload them (it skips only ``images/``, ``.git`` and ``.cache/huggingface``), and its edit and
merge tools write a new folder without them; beside it, a dataset folder holds only what lerobot
wrote (and ``meta/reverie.json``, the collection's provenance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SIDECAR_SUFFIX = ".reverie"


def dataset_sidecar(root: str | Path) -> Path:
    """The folder of Reverie's files about the dataset at ``root``: ``<root>.reverie``, beside it."""
    root = Path(root).resolve()  # "." or "x/.." name no folder
    return root.parent / (root.name + SIDECAR_SUFFIX)


def stats_path(root: str | Path) -> Path:
    """Where the statistics of the dataset at ``root`` are cached (``data.clips`` writes them)."""
    return dataset_sidecar(root) / "stats.json"


class CorruptDatasetError(ValueError):
    """A dataset file that cannot be read or holds values that were not recorded (here: statistics
    computed from corrupt data; ``data.validate`` raises it for the rest of a dataset)."""


def check_finite(features: dict[str, dict[str, list[float]]], source: str | Path) -> None:
    """Statistics {key: {mean, std, ...}} read from ``source``: every value finite, else an error naming it."""
    for key, stats in features.items():
        for name, values in stats.items():
            v = np.asarray(values, dtype=np.float64).reshape(-1)
            if not np.isfinite(v).all():
                i = int(np.flatnonzero(~np.isfinite(v))[0])
                raise CorruptDatasetError(f"{source}: {key} {name}[{i}] = {v[i]} is not finite: the statistics were "
                                          f"computed from corrupt data; delete it to recompute them")


class Normalizer:
    """Mean/std normalisation per feature, from a dataset's statistics (``stats_path``)."""

    def __init__(self, stats: dict[str, dict[str, list[float]]], eps: float = 1e-3, source: str | Path = "statistics"):
        check_finite(stats, source)  # a non-finite mean or std would turn every normalised value into NaN or 0
        self.stats = stats
        self.mean = {k: torch.tensor(v["mean"], dtype=torch.float32) for k, v in stats.items()}
        self.std = {k: torch.tensor(v["std"], dtype=torch.float32).clamp_min(eps) for k, v in stats.items()}

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean[key]) / self.std[key]

    def unnormalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return x * self.std[key] + self.mean[key]
