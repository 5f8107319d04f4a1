"""Training windows over any LeRobotDataset (a local root or a hub repo id).

A clip anchored at frame t of an episode holds, with frame stride s:

    context frames   t-(C-1)s, ..., t-s, t        (C frames per view, padded at the episode start)
    action chunk     a_t, ..., a_{t+H-1}           (H actions, padded at the episode end)
    future frames    t+s, t+2s, ..., t+H           (F = H/s frames: the frames the chunk covers)

Dimension legend: V views, C context frames, F future frames, H action horizon, A action dim,
S state dim, D object-state dim, h x w image size.

Item keys: ``context`` (V, C, 3, h, w) and ``future`` (V, F, 3, h, w) images in [0, 1];
``context_mask`` (C,), ``future_mask`` (F,), ``action_mask`` (H,) (True = a real frame/action,
False = padding past an episode boundary, which repeats the nearest real frame and has zero
actions); ``action`` (H, A) and ``context_state`` (C, S), ``future_state`` (F, S) normalised
with the dataset statistics; ``future_env_state`` (F, D) raw object state (for probes);
``future_progress`` (F,); ``task`` str; ``episode_index``, ``frame_index``.

Statistics (mean, std, min, max of action, state and object state over every frame) are
computed once and cached beside the dataset folder (``simulator.normalization.stats_path``:
``<root>.reverie/stats.json``), with a digest of lerobot's ``meta/info.json`` and
``meta/stats.json``: any change of the dataset (lerobot's edit tools rewrite both) recomputes them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from data.validate import (
    EpisodeRecord,
    check_local_dataset,
    check_stats,
    check_values,
    name_unreadable_file,
)
from data.video import VIDEO_BACKENDS, decode_frames
from simulator import keys
from simulator.normalization import Normalizer, stats_path

STATS_KEYS = (keys.ACTION, keys.STATE, keys.ENV_STATE)
# lerobot wants a repo id even for a local root; a root is checked whole first (data.validate), so
# lerobot never has a missing piece to fetch from the hub under this name.
LOCAL_REPO_ID = "local/dataset"


@dataclass
class ClipConfig:
    context: int = 4  # C context frames per view
    horizon: int = 8  # H actions in a chunk
    stride: int = 1  # s: frame stride of context and future frames; must divide horizon
    views: tuple[str, ...] | None = None  # None = every video view of the dataset
    video_backend: str = "pyav"  # pyav | torchcodec | decord
    normalize: bool = True  # normalise action and state with the dataset statistics
    cache_frames: bool = False  # decode every frame once into memory (uint8): for training on small datasets

    def __post_init__(self):
        if self.context < 1:
            raise ValueError(f"context must be >= 1, got {self.context=}")
        if self.horizon < 1 or self.stride < 1 or self.horizon % self.stride:
            raise ValueError(f"stride must divide horizon (both >= 1), got {self.horizon=} {self.stride=}")
        if self.video_backend not in VIDEO_BACKENDS:
            raise ValueError(f"unknown {self.video_backend=}; choose one of {VIDEO_BACKENDS}")

    @property
    def future(self) -> int:
        return self.horizon // self.stride


@dataclass
class DatasetConfig:
    """Which dataset, which views, and which episodes are held out (the last ``val_episodes``):
    the one split that training, evaluation and probes share."""

    root: Path | None = None  # a local LeRobotDataset
    repo_id: str | None = None  # or a hub dataset
    views: tuple[str, ...] | None = None  # None = every view
    val_episodes: int = 2  # the last N episodes are held out (never trained on)
    # Train on only the first N of the training episodes (None: all); the held-out ones stay the same.
    # For data-scaling studies, e.g. a family of policies cloned from 10, 25, 50, ... episodes.
    train_episodes: int | None = None
    video_backend: str = "pyav"  # pyav | torchcodec | decord
    cache_frames: bool = False  # decode each episode once into memory (~25 KB per frame at 2 views of 64x64)

    def require(self) -> None:
        if self.root is None and self.repo_id is None:
            raise ValueError("give a dataset: --dataset.root PATH or --dataset.repo_id USER/NAME")

    def split(self) -> tuple[list[int], list[int]]:
        """(training episodes, held-out episodes)."""
        from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

        if self.root is not None:  # else lerobot turns to the hub for what is missing and fails with a network error
            check_local_dataset(self.root)
        n = LeRobotDatasetMetadata(self.repo_id or LOCAL_REPO_ID, root=self.root).total_episodes
        if n <= self.val_episodes:
            raise ValueError(f"the dataset has {n} episodes; hold out fewer than that (--dataset.val_episodes)")
        train = list(range(n - self.val_episodes))
        if self.train_episodes is not None:
            if not 1 <= self.train_episodes <= len(train):
                raise ValueError(f"train_episodes must be in [1, {len(train)}] (the dataset has {n} episodes, "
                                 f"{self.val_episodes} held out), got {self.train_episodes}")
            train = train[:self.train_episodes]
        return train, list(range(n - self.val_episodes, n))

    def clips(self, episodes: list[int], **clip_config) -> "ClipDataset":
        clip_config.setdefault("cache_frames", self.cache_frames)
        config = ClipConfig(views=self.views, video_backend=self.video_backend, **clip_config)
        return ClipDataset(self.repo_id, self.root, config, episodes=episodes)


def dataset_digest(root: Path) -> str:
    """A digest of lerobot's ``meta/info.json`` (size, features) and ``meta/stats.json`` (its statistics
    of every feature): it changes whenever the dataset's frames do, which lerobot's tools rewrite both for."""
    digest = hashlib.sha256()
    for name in ("info.json", "stats.json"):
        path = Path(root) / "meta" / name
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def load_or_compute_stats(root: Path, total_frames: int, load_columns, record: EpisodeRecord | None = None) -> dict:
    """Statistics cached beside the dataset; recomputed (``load_columns()`` -> {key: (N, d)}) when the
    dataset is not the one they were computed from. Cached ones must agree with lerobot's per-episode
    ``record``."""
    path, digest = stats_path(root), dataset_digest(root)
    if path.exists():
        stats = json.loads(path.read_text())
        if stats.get("dataset_digest") == digest:
            check_stats(stats["features"], path, record)
            return stats["features"]
    columns = load_columns()
    features = {}
    for key in STATS_KEYS:
        if key in columns:
            x = columns[key].double()
            features[key] = {"mean": x.mean(0).tolist(), "std": x.std(0, correction=0).tolist(),
                             "min": x.min(0).values.tolist(), "max": x.max(0).values.tolist()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"dataset_digest": digest, "total_frames": total_frames, "features": features}, indent=1))
    tmp.replace(path)
    return features


class ClipDataset(torch.utils.data.Dataset):
    """Clips of every frame of the chosen episodes of a LeRobotDataset."""

    def __init__(self, repo_id: str | None = None, root: str | Path | None = None,
                 config: ClipConfig | None = None, episodes: list[int] | None = None):
        self.config = config or ClipConfig()
        cfg = self.config
        if repo_id is None and root is None:
            raise ValueError("give a hub repo_id, a local root, or both")
        record = check_local_dataset(root) if root is not None else None
        # lerobot reads the tables (downloading from the hub when root is not given); we decode videos.
        self.lerobot = _open_lerobot(repo_id, root, episodes=episodes,
                                     video_backend="pyav" if cfg.video_backend == "decord" else cfg.video_backend)
        meta = self.meta = self.lerobot.meta
        self.root = Path(self.lerobot.root)
        record = record or EpisodeRecord.read(self.root)
        self.fps = meta.fps
        available = [keys.view_of(k) for k in meta.video_keys]
        self.views = tuple(cfg.views) if cfg.views is not None else tuple(available)
        missing = [v for v in self.views if v not in available]
        if missing or not self.views:
            raise KeyError(f"camera view(s) {missing} not in dataset {self.root}; it has {available}")
        for key in (keys.ACTION, keys.STATE):
            if key not in meta.features:
                raise KeyError(f"dataset {self.root} has no {key!r} feature; it has {sorted(meta.features)}")

        wanted = [k for k in (keys.ACTION, keys.STATE, keys.ENV_STATE, keys.PROGRESS) if k in meta.features]
        self.columns, self.episode_of, self.frame_of, self.task_of = _read_columns(self.lerobot, wanted, record)

        def whole_dataset_columns():  # statistics always describe the whole dataset
            if episodes is None:
                return self.columns
            full = _open_lerobot(repo_id, root)
            return _read_columns(full, [k for k in STATS_KEYS if k in meta.features], record)[0]

        self.normalize_with(Normalizer(load_or_compute_stats(self.root, meta.total_frames, whole_dataset_columns, record),
                                       source=stats_path(self.root)))
        # Row range of each episode inside the loaded table (rows are grouped by episode).
        eps, counts = torch.unique_consecutive(self.episode_of, return_counts=True)
        ends = counts.cumsum(0)
        self.episodes = eps.tolist()
        self._rows = {ep: (int(end - n), int(end)) for ep, n, end in zip(self.episodes, counts, ends)}
        # per row: its episode's first row and length (state_windows reads many rows at once)
        self._row_first = torch.repeat_interleave(ends - counts, counts)
        self._row_length = torch.repeat_interleave(counts, counts)
        self.tasks = {int(i): t for t, i in zip(meta.tasks.index, meta.tasks["task_index"])}
        self._cache: dict[int, torch.Tensor] = {}
        self._first: dict[int, torch.Tensor] = {}  # uint8 (V, 3, h, w) frame 0 per episode, as clips ask for it
        if cfg.cache_frames:
            from tqdm import tqdm

            for ep in tqdm(self.episodes, desc="decode frames into memory", leave=False):
                self._cache[ep] = self.episode_frames(ep)

    def normalize_with(self, normalizer: Normalizer) -> None:
        """Normalise actions and states with ``normalizer``'s statistics (``stats``, what a model
        trained on these clips saves beside it): the dataset's own by default, a model's own when
        it is evaluated or fine-tuned on another dataset."""
        self.normalizer, self.stats = normalizer, normalizer.stats

    def __len__(self) -> int:
        return len(self.episode_of)

    def episode_range(self, ep: int) -> tuple[int, int]:
        """(first, end) rows of episode ``ep`` in the loaded columns (``columns``, ``episode_of``, ...)."""
        return self._rows[ep]

    def episode_frames(self, ep: int) -> torch.Tensor:
        """(V, N, 3, h, w) uint8: every frame of episode ``ep``, from memory with ``cache_frames``."""
        if ep in self._cache:
            return self._cache[ep]
        first, end = self._rows[ep]
        return self.decode(ep, list(range(end - first)))

    def __getitem__(self, idx: int) -> dict:
        C = self.config.context
        ep = int(self.episode_of[idx])
        first, end = self._rows[ep]
        (ctx_c, fut_c, act_c), (ctx_mask, fut_mask, act_mask) = self._clip_index(
            torch.tensor([int(self.frame_of[idx])]), torch.tensor([end - first]))
        ctx_c, fut_c, act_c, ctx_mask, fut_mask, act_mask = (x[0] for x in (ctx_c, fut_c, act_c, ctx_mask, fut_mask, act_mask))
        frames = self._frames(ep, torch.cat([ctx_c, fut_c]))  # (V, C+F, 3, h, w)
        action, state = self._action_state(first + act_c, act_mask, first + torch.cat([ctx_c, fut_c]))
        item = {
            "context": frames[:, :C],
            "future": frames[:, C:],
            "first": self._first_frame(ep),  # the episode's first frame: a world model's memory
            "context_mask": ctx_mask,
            "future_mask": fut_mask,
            "action": action,
            "action_mask": act_mask,
            "context_state": state[:C],
            "future_state": state[C:],
            "task": self.tasks[int(self.task_of[idx])],
            "episode_index": ep,
            "frame_index": int(self.frame_of[idx]),
        }
        if keys.ENV_STATE in self.columns:
            item["future_env_state"] = self.columns[keys.ENV_STATE][first + fut_c]
        if keys.PROGRESS in self.columns:
            item["future_progress"] = self.columns[keys.PROGRESS][first + fut_c].squeeze(-1)
        return item

    def state_windows(self, rows: torch.Tensor) -> dict:
        """What the clips at ``rows`` (N,) hold besides their frames, read in one go from the columns:
        ``action`` (N, H, A), ``context_state`` (N, C, S), ``future_state`` (N, F, S), ``future_mask``
        (N, F), as ``__getitem__`` gives them (for training the parts of a model that see no frames)."""
        C = self.config.context
        first = self._row_first[rows]
        (ctx_c, fut_c, act_c), (_, fut_mask, act_mask) = self._clip_index(self.frame_of[rows], self._row_length[rows])
        action, state = self._action_state(first[:, None] + act_c, act_mask, first[:, None] + torch.cat([ctx_c, fut_c], 1))
        return {"action": action, "context_state": state[:, :C], "future_state": state[:, C:], "future_mask": fut_mask}

    def _clip_index(self, t: torch.Tensor, length: torch.Tensor):
        """Frames within their episodes of the clips at frames ``t`` (N,) of episodes of ``length``
        (N,): the context frames (N, C), future frames (N, F) and actions (N, H), clamped into the
        episode, and the masks of those that lie inside it."""
        C, H, s = self.config.context, self.config.horizon, self.config.stride
        t, last = t.long()[:, None], length.long()[:, None] - 1
        index = (t + torch.arange(-(C - 1) * s, 1, s), t + torch.arange(s, H + 1, s), t + torch.arange(H))
        clamped = tuple(torch.minimum(i.clamp_min(0), last) for i in index)
        return clamped, (index[0] >= 0, index[1] <= last, index[2] <= last)

    def _action_state(self, action_rows: torch.Tensor, action_mask: torch.Tensor, state_rows: torch.Tensor):
        """Actions (zero past an episode's end) and states at those rows of the columns, normalised
        with ``config.normalize``."""
        action = self.columns[keys.ACTION][action_rows] * action_mask[..., None]
        state = self.columns[keys.STATE][state_rows]
        if self.config.normalize:
            action = self.normalizer.normalize(keys.ACTION, action) * action_mask[..., None]
            state = self.normalizer.normalize(keys.STATE, state)
        return action, state

    def _first_frame(self, ep: int) -> torch.Tensor:
        """(V, 3, h, w) float frame 0 of episode ``ep``, decoded once per episode: asked for with the
        clip's own frames, a video decoder would decode everything between frame 0 and them."""
        if ep not in self._first:
            self._first[ep] = self._cache[ep][:, 0] if ep in self._cache else self.decode(ep, [0])[:, 0]
        return self._first[ep].float().div(255.0)

    def _frames(self, ep: int, frame_idx: torch.Tensor) -> torch.Tensor:
        """(V, N, 3, h, w) float frames in [0, 1] of episode ``ep`` at in-episode indices."""
        if ep in self._cache:
            return self._cache[ep][:, frame_idx].float().div_(255.0)
        unique, inverse = torch.unique(frame_idx, return_inverse=True)
        return self.decode(ep, unique.tolist())[:, inverse].float().div_(255.0)

    def decode(self, ep: int, frame_idx: list[int]) -> torch.Tensor:
        """(V, N, 3, h, w) uint8 frames of every view of episode ``ep`` at in-episode indices."""
        meta_ep = self.meta.episodes[ep]
        per_view = []
        for view in self.views:
            key = keys.image_key(view)
            start = meta_ep[f"videos/{key}/from_timestamp"]
            path = self.root / self.meta.get_video_file_path(ep, key)
            ts = [start + i / self.fps for i in frame_idx]
            per_view.append(decode_frames(path, ts, self.config.video_backend, self.lerobot.tolerance_s))
        return torch.stack(per_view)


def _open_lerobot(repo_id: str | None, root: str | Path | None, **kwargs):
    """lerobot's dataset; a data file that it cannot read is named (the datasets library does not)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:
        return LeRobotDataset(repo_id or LOCAL_REPO_ID, root=root, **kwargs)
    except Exception as e:
        if root is not None:
            name_unreadable_file(root, e)
        raise


def _read_columns(lerobot, wanted: list[str], record: EpisodeRecord):
    """{key: (N, d) float} of the ``wanted`` features, and (N,) episode, frame and task index of each
    row, checked against what lerobot recorded when it wrote the episodes."""
    table = lerobot.hf_dataset.select_columns([*wanted, "episode_index", "frame_index", "task_index"])
    table = table.with_format("torch")[:]
    columns = {k: _as_2d(table[k]).float() for k in wanted}
    if keys.ENV_STATE in columns:  # a dataset recorded before the common layout, as the record's ranges are
        columns[keys.ENV_STATE] = keys.common_env_state(columns[keys.ENV_STATE], record.root)
    episode_of, frame_of = table["episode_index"].long(), table["frame_index"].long()
    check_values(record, columns, episode_of, frame_of)
    return columns, episode_of, frame_of, table["task_index"].long()


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    return x[:, None] if x.ndim == 1 else x
