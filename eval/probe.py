"""A state probe: a small CNN trained on real frames to read the robot's state and the objects'
poses. Applied to imagined frames it tells whether the world model put the arm and the objects
where physics did, which pixel metrics cannot. It uses no pretrained weights.

Dimension legend: N frames, V views, h x w image size, K probed values (observation.state then
observation.environment_state, in its common layout: the first object's height is value
``keys.STATE_DIM + 2`` for every task).
"""

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import Tensor, nn
from tqdm import tqdm

from simulator import keys


class StateProbe(ModelMixin, ConfigMixin):
    """(N, V, 3, h, w) frames in [0, 1] -> (N, K) values in the dataset's units."""

    @register_to_config
    def __init__(self, views: int = 2, outputs: int = keys.STATE_DIM + keys.ENV_STATE_DIM,
                 channels: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers, c_in = [], 3 * views
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c_in, 256), nn.SiLU(), nn.Linear(256, outputs))
        self.register_buffer("mean", torch.zeros(outputs))
        self.register_buffer("std", torch.ones(outputs))

    def forward(self, frames: Tensor) -> Tensor:
        if frames.ndim != 5 or frames.shape[1] * 3 != self.features[0].in_channels:
            raise ValueError(f"frames must have shape (N, V={self.config.views}, 3, h, w), got {tuple(frames.shape)}")
        x = frames.flatten(1, 2) * 2 - 1
        return self.head(self.features(x)) * self.std + self.mean


@dataclass
class ProbeConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    frame_every: int = 2  # use every n-th frame of each episode
    seed: int = 0


def load_frames(clips, episodes: list[int], every: int = 1) -> tuple[Tensor, Tensor]:
    """All (every n-th) frames of ``episodes`` of a ClipDataset's LeRobotDataset: uint8 frames
    (N, V, 3, h, w) and float targets (N, K) = observation.state ++ observation.environment_state."""
    frames, targets = [], []
    for ep in episodes:
        first, end = clips.episode_range(ep)
        idx = list(range(0, end - first, every))
        frames.append(clips.decode(ep, idx).transpose(0, 1))
        rows = torch.tensor(idx) + first
        targets.append(torch.cat([clips.columns[keys.STATE][rows], clips.columns[keys.ENV_STATE][rows]], dim=-1))
    return torch.cat(frames), torch.cat(targets)


def train_probe(frames: Tensor, targets: Tensor, cfg: ProbeConfig, binary: bool = False) -> StateProbe:
    """Fits a probe on real frames (uint8 (N, V, 3, h, w)) and their targets (N, K). With ``binary``
    the targets are 0/1 labels and the probe outputs their logits (binary cross-entropy): a classifier
    of what the frames show (benchmarks.grasp_outcome)."""
    torch.manual_seed(cfg.seed)
    probe = StateProbe(views=frames.shape[1], outputs=targets.shape[1])
    if not binary:
        probe.mean.copy_(targets.mean(0))
        probe.std.copy_(targets.std(0).clamp_min(1e-3))
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in tqdm(range(cfg.steps), desc="train state probe", leave=False):
        idx = torch.randint(len(frames), (cfg.batch_size,), generator=gen)
        pred, target = probe(frames[idx].float() / 255), targets[idx].float()
        loss = (nn.functional.binary_cross_entropy_with_logits(pred, target) if binary
                else ((pred - target) / probe.std).square().mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return probe.eval()


@torch.no_grad()
def probe_error(probe: StateProbe, frames: Tensor, targets: Tensor, batch_size: int = 256) -> Tensor:
    """Mean absolute error per probed value (K,) on frames (uint8 or float in [0, 1])."""
    errs = []
    for i in range(0, len(frames), batch_size):
        f = frames[i:i + batch_size]
        f = f.float() / 255 if f.dtype == torch.uint8 else f
        errs.append((probe(f) - targets[i:i + batch_size]).abs())
    return torch.cat(errs).mean(0)


def eef_error(errors: Tensor) -> float:
    """End-effector position error (m): mean over x, y, z of observation.state[:3]."""
    return float(np.mean(errors[:3].tolist()))
