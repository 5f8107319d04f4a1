"""The progress value model: how far an episode has got towards its task, and whether it is solved.

Reads the current frame and a few recent ones of every view, the episode's first frames (where
things started) and the task string; returns progress in [0, 1], a success logit ("the task is
solved in this frame") and an uncertainty: the spread of an ensemble of K heads on a shared trunk.
It uses no pretrained weights: a small CNN over all frames stacked on channels, and the task
embedded as a hashed bag of words (``task_tokens``), so a task string it was never trained on
still maps to a vector, and a wrong task can be taught to give no progress.

It does not decide rewards; ``simulator.env`` turns progress and success into rewards. Training
targets and augmentations live in ``train/progress.py``.

Dimension legend: B batch, V views, T frames per view (current and recent), N frames of an
episode, K ensemble heads, h x w image size. Frames are floats in [0, 1].
"""

import itertools
import json
import re
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import Tensor, nn

from simulator.progress.configuration_progress import ProgressConfig


@dataclass
class ProgressOutput:
    progress: Tensor  # (B,) in [0, 1]: the ensemble mean
    success_logit: Tensor  # (B,) the ensemble mean of the success logits
    uncertainty: Tensor  # (B,) standard deviation of the heads' progress
    progress_logits: Tensor  # (B, K) per head (what training fits)
    success_logits: Tensor  # (B, K) per head

    @property
    def success_prob(self) -> Tensor:
        """(B,) probability that the task is solved in this frame."""
        return torch.sigmoid(self.success_logit)


def task_tokens(task: str, buckets: int) -> list[int]:
    """Hashed bag of words of a task string: its lower-case words and adjacent word pairs, each
    hashed (crc32: the same in every process, unlike ``hash``) into ``buckets`` ids. Word pairs
    tell "pick up the red cube" from "put the cube up"."""
    words = re.findall(r"[a-z0-9]+", task.lower())
    grams = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    return [zlib.crc32(g.encode()) % buckets for g in grams]


def history_indices(t: int, history: int, stride: int) -> list[int]:
    """In-episode indices of the T = ``history`` frames the model sees at frame t, oldest first:
    t - (T-1) stride, ..., t - stride, t; indices before the episode start repeat frame 0."""
    return [max(0, t - (history - 1 - i) * stride) for i in range(history)]


class ProgressModel(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, views: tuple[str, ...] = ("front", "wrist"), image_size: int = 64, history: int = 2,
                 history_stride: int = 4, channels: tuple[int, ...] = (32, 64, 128, 128), norm_num_groups: int = 8,
                 pool_size: int = 4, width: int = 256, task_buckets: int = 1024, ensemble: int = 5,
                 head_width: int = 64):
        """Arguments as in ProgressConfig."""
        super().__init__()
        cfg = self.spec = ProgressConfig(
            views=tuple(views), image_size=image_size, history=history, history_stride=history_stride,
            channels=tuple(channels), norm_num_groups=norm_num_groups, pool_size=pool_size, width=width,
            task_buckets=task_buckets, ensemble=ensemble, head_width=head_width)
        layers, c_in = [], 3 * len(cfg.views) * cfg.frames_per_view
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(cfg.norm_num_groups, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(cfg.norm_num_groups, c), nn.SiLU()]
            c_in = c
        self.encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(cfg.pool_size), nn.Flatten(),
                                     nn.Linear(c_in * cfg.pool_size ** 2, cfg.width), nn.SiLU())
        self.task_embedding = nn.EmbeddingBag(cfg.task_buckets, cfg.width, mode="mean")
        # Image, task and their product: the product lets a wrong task switch the image's evidence off.
        self.trunk = nn.Sequential(nn.LayerNorm(3 * cfg.width), nn.Linear(3 * cfg.width, cfg.width), nn.SiLU(),
                                   nn.Linear(cfg.width, cfg.width), nn.SiLU())
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(cfg.width, cfg.head_width), nn.SiLU(), nn.Linear(cfg.head_width, 2))
            for _ in range(cfg.ensemble))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "ProgressModel":
        """diffusers' from_pretrained, after checking that a local folder holds a ProgressModel (a
        world model or a probe would otherwise fail deep inside diffusers, or load half-empty)."""
        path = Path(pretrained_model_name_or_path)
        if path.is_dir():
            folder = path / kwargs["subfolder"] if kwargs.get("subfolder") else path
            config = folder / cls.config_name
            if not config.is_file():
                hint = (f"; it looks like a training output folder: load {path / 'model'}"
                        if (path / "model" / cls.config_name).is_file() else "")
                raise FileNotFoundError(f"{folder} holds no {cls.config_name}: not a saved {cls.__name__}{hint}")
            found = json.loads(config.read_text()).get("_class_name")
            if found != cls.__name__:
                raise ValueError(f"{folder} holds a {found} checkpoint, not a {cls.__name__}: give the folder "
                                 f"of a trained progress model (reverie-train progress saves <output_dir>/model)")
        # safetensors only: diffusers would otherwise fall back to a pickled .bin, which can run code
        return super().from_pretrained(pretrained_model_name_or_path, **{**kwargs, "use_safetensors": True})

    def forward(self, frames: Tensor, first_frames: Tensor, task: list[str]) -> ProgressOutput:
        """frames (B, V, T, 3, h, w) in [0, 1]: the current frame last, earlier ones before it
        (``history_indices``); first_frames (B, V, 3, h, w) the episode's first frames; task: B strings."""
        self._check(frames, first_frames, task)
        B = frames.shape[0]
        x = torch.cat([frames, first_frames[:, :, None]], dim=2)  # (B, V, T+1, 3, h, w)
        image = self.encoder(x.flatten(1, 3) * 2 - 1)  # (B, width)
        text = self._embed_tasks(task, frames.device)  # (B, width)
        trunk = self.trunk(torch.cat([image, text, image * text], dim=-1))
        logits = torch.stack([head(trunk) for head in self.heads], dim=1)  # (B, K, 2)
        progress_logits, success_logits = logits[..., 0], logits[..., 1]
        heads = torch.sigmoid(progress_logits)
        return ProgressOutput(progress=heads.mean(1), success_logit=success_logits.mean(1),
                              uncertainty=heads.std(1, correction=0) if heads.shape[1] > 1 else heads.new_zeros(B),
                              progress_logits=progress_logits, success_logits=success_logits)

    def _embed_tasks(self, task: list[str], device) -> Tensor:
        tokens = [task_tokens(t, self.spec.task_buckets) for t in task]
        flat = torch.tensor([i for ids in tokens for i in ids], dtype=torch.long)
        lengths = torch.tensor([len(ids) for ids in tokens], dtype=torch.long)
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
        return self.task_embedding(flat.to(device), offsets.to(device))  # an empty string embeds to zeros

    @torch.no_grad()
    def score_episode(self, frames: Tensor, task: str, first_frames: Tensor | None = None,
                      batch_size: int = 64) -> ProgressOutput:
        """Scores every frame of one episode.

        frames (V, N, 3, h, w): uint8, or floats in [0, 1]; first_frames (V, 3, h, w) the episode's
        first frames (default frames[:, 0]: give the real ones when ``frames`` starts mid-episode).
        Returns a ProgressOutput whose fields have N rows, one per frame.
        """
        if frames.ndim != 5:
            raise ValueError(f"frames must have shape (V, N, 3, h, w), got {tuple(frames.shape)}")
        first = frames[:, 0] if first_frames is None else first_frames
        T, s = self.spec.history, self.spec.history_stride
        N, outputs = frames.shape[1], []
        for i in range(0, N, batch_size):
            idx = torch.tensor([history_indices(t, T, s) for t in range(i, min(i + batch_size, N))])
            x = _unit(frames[:, idx].transpose(0, 1).to(self.device))  # (b, V, T, 3, h, w)
            f0 = _unit(first.to(self.device))[None].expand(len(idx), *first.shape)
            outputs.append(self(x, f0, [task] * len(idx)))
        return ProgressOutput(*(torch.cat([getattr(o, f.name) for o in outputs]) for f in fields(ProgressOutput)))

    def _check(self, frames: Tensor, first_frames: Tensor, task) -> None:
        """Clear errors for inputs that do not fit the model, naming the input and the dimension."""
        cfg = self.spec
        V, s = len(cfg.views), cfg.image_size
        for name, x, shape, dims in (("frames", frames, (V, cfg.history, 3, s, s), "V, T, 3, h, w"),
                                     ("first_frames", first_frames, (V, 3, s, s), "V, 3, h, w")):
            if not torch.is_tensor(x) or not x.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor in [0, 1], got "
                                f"{getattr(x, 'dtype', type(x))} (uint8 frames: divide by 255)")
            if x.ndim != len(shape) + 1 or x.shape[1] != V:
                raise ValueError(f"{name} must have shape (B, {dims}) with V={V} views {cfg.views}, "
                                 f"got {tuple(x.shape)}")
            if tuple(x.shape[1:]) != shape:
                raise ValueError(f"{name} must have shape (B, {dims}) = (B, {', '.join(map(str, shape))}), "
                                 f"got {tuple(x.shape)}")
        if first_frames.shape[0] != frames.shape[0]:
            raise ValueError(f"first_frames has batch size {first_frames.shape[0]}, frames has {frames.shape[0]}")
        if not isinstance(task, (list, tuple)) or not all(isinstance(t, str) for t in task):
            raise TypeError(f"task must be a list of B strings (one per sample: [task] * B), got {type(task).__name__}")
        if len(task) != frames.shape[0]:
            raise ValueError(f"task has {len(task)} strings, frames has batch size {frames.shape[0]}")


def _unit(frames: Tensor) -> Tensor:
    """uint8 frames -> floats in [0, 1]; float frames are taken to be in [0, 1] already."""
    return frames.float() / 255 if frames.dtype == torch.uint8 else frames
