"""The order in which a training reads its samples: a function of (seed, step) alone, split
between processes, so that a resumed run reads what an uninterrupted one would.

The world-model training (over a ``ClipDataset``) and the policy trainings (over a
``data.episodes.FrameTable``) draw their batches so. It holds no data and runs no loop.
"""

import torch


def batches_per_epoch(n: int, batch_size: int, world: int) -> int:
    per_epoch = n // (batch_size * world)
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} x {world} processes is larger than the dataset ({n} samples)")
    return per_epoch


def epoch_batches(n: int, batch_size: int, world: int, seed: int, epoch: int) -> torch.Tensor:
    """Epoch ``epoch``'s sample indices as (batches, world, batch_size): a permutation of range(n)
    seeded by (seed, epoch), so the order depends only on the step; micro-step k of process r takes
    [k, r]."""
    per_epoch = batches_per_epoch(n, batch_size, world)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[: per_epoch * batch_size * world].reshape(per_epoch, world, batch_size)
