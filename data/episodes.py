"""Whole episodes of a LeRobotDataset in memory, for what reads an episode (or every frame) at
once rather than clip by clip (``data.clips``).

- ``Episode``, ``load_episodes``, ``held_out_episodes``: every frame of the chosen episodes with
  their labels and raw actions and states; the progress model trains on them, the value
  evaluation scores them. ``regenerate`` adds each episode as a world model re-imagines it.
- ``FrameTable``: every frame of the chosen episodes as tensors, with the action chunk that
  starts at each, gathered into batches without a DataLoader (behaviour cloning, and the real
  share of advantage-conditioned RL).
- ``held_out_count``: the demo's split, which its report reads the same way.

It trains nothing; the world model is imported only where episodes are re-generated.

Dimension legend: V views, N frames (of an episode, or of the table), H action chunk, A action
dim, S state dim, h x w image size.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from data.clips import LOCAL_REPO_ID, DatasetConfig
from data.sampling import batches_per_epoch, epoch_batches
from simulator import keys


def held_out_count(episodes: int) -> int:
    """Held-out episodes of a demo dataset of ``episodes``: a tenth, at least one."""
    return max(1, episodes // 10)


DEMO_EPISODES = 300  # the full demo's collection (train.demo's preset "full")
DEMO_HELD_OUT = held_out_count(DEMO_EPISODES)  # its held-out split: what policy cloning and RL default to


@dataclass
class Episode:
    """One episode in memory, with its labels."""

    index: int  # episode index in the dataset
    frames: Tensor  # (V, N, 3, h, w) uint8
    progress: Tensor  # (N,) progress labels in [0, 1]
    solved: Tensor  # (N,) bool: the task is solved in this frame
    success: bool  # the episode ends solved
    task: str
    actions: Tensor | None = None  # (N, A) raw actions
    states: Tensor | None = None  # (N, S) raw proprioception
    regenerated: Tensor | None = None  # (V, N, 3, h, w) uint8: the episode re-imagined by a world model

    @property
    def length(self) -> int:
        return self.frames.shape[1]


def load_episodes(dataset: DatasetConfig, episodes: list[int],
                  desc: str = "decode episodes") -> tuple[list[Episode], tuple[str, ...]]:
    """The chosen episodes, every frame decoded (uint8), with their labels; and the view names.

    Needs the ``progress`` and ``next.success`` features that reverie-collect writes.
    """
    clips = dataset.clips(episodes, context=1, horizon=1, cache_frames=False, normalize=False)
    missing = [k for k in (keys.PROGRESS, keys.SUCCESS) if k not in clips.meta.features]
    if missing:
        raise KeyError(f"dataset {clips.root} has no {missing} feature(s): the progress model needs the labels "
                       f"that reverie-collect writes; it has {sorted(clips.meta.features)}")
    solved_after = clips.lerobot.hf_dataset.select_columns([keys.SUCCESS]).with_format("torch")[:][keys.SUCCESS]
    solved_after = solved_after.reshape(-1).bool()  # next.success: solved after this frame's action
    progress = clips.columns[keys.PROGRESS].reshape(-1)
    out = []
    for ep in tqdm(clips.episodes, desc=desc, leave=False):
        first, end = clips.episode_range(ep)
        after = solved_after[first:end]
        out.append(Episode(index=ep, frames=clips.episode_frames(ep),
                           progress=progress[first:end].clone(),
                           solved=torch.cat([after.new_zeros(1), after[:-1]]),  # what frame t shows
                           success=bool(after.any()), task=clips.tasks[int(clips.task_of[first])],
                           actions=clips.columns[keys.ACTION][first:end].clone(),
                           states=clips.columns[keys.STATE][first:end].clone()))
    return out, clips.views


def held_out_episodes(dataset: DatasetConfig, views: tuple[str, ...], n: int | None = None) -> list[Episode]:
    """The held-out episodes of the split (the first ``n`` of them; None: all), with the given views
    in that order (for evaluation)."""
    _, held_out = dataset.split()
    episodes, _ = load_episodes(replace(dataset, views=tuple(views)), list(held_out)[:n], desc="decode held-out episodes")
    return episodes


def regenerate_episodes(episodes: list[tuple], world_model: Path, stats_root: Path | None, device,
                        batch_size: int = 32, with_states: bool = False) -> list:
    """The one re-generation entry point: whole episodes (frames (V, N, 3, h, w) uint8, actions
    (N, A), states (N, S), raw) re-imagined by ``world_model`` open loop from their first frames,
    with the imagined env's default sampler (its sampling steps, still-pixel threshold and action
    guidance), so that a re-generation looks as an imagined episode does. Returns
    ``simulator.world_model.sampler.regenerate_episodes``' list."""
    from simulator.env import ImaginedEnvConfig, load_normalizer
    from simulator.world_model import WorldModel
    from simulator.world_model.sampler import regenerate_episodes as regenerate_open_loop

    model = WorldModel.from_pretrained(world_model).to(device).eval()
    V, h = episodes[0][0].shape[0], episodes[0][0].shape[-1]
    if (model.spec.views, model.spec.image_size) != (V, h):
        raise ValueError(f"the world model {world_model} imagines {model.spec.views} views of "
                         f"{model.spec.image_size}px, the episodes have {V} of {h}px")
    return regenerate_open_loop(ImaginedEnvConfig().sampler(model), episodes, load_normalizer(world_model, stats_root), batch_size=batch_size,
                                with_states=with_states)


def regenerate(episodes: list[Episode], world_model: Path, stats_root: Path | None, device) -> None:
    """Fills ``Episode.regenerated``: each episode re-imagined by the world model
    (``regenerate_episodes``)."""
    regenerated = regenerate_episodes([(e.frames, e.actions, e.states) for e in episodes], world_model, stats_root, device)
    for e, frames in zip(episodes, regenerated):
        e.regenerated = frames


class FrameTable:
    """Every frame of the chosen episodes in memory as tensors, indexed without a DataLoader: the
    frames (N, V, 3, h, w) uint8, the state (N, S), the action chunk starting at each frame
    (N, H, A) with its padding mask (N, H), and the task. A batch is a gather, which keeps the
    data side negligible beside the model on a CPU.

    With ``with_success`` it also holds ``success`` (N,) bool, the label of each frame's episode
    (``keys.EPISODE_SUCCESS``), which advantage-conditioned RL turns into the frame's bin
    (``train.rl.advantage_conditioned``); otherwise ``success`` is None.

    ``regenerate`` adds the episodes as a world model re-imagines them; a batch then reads each
    sample's frames and state from the re-generation with probability ``regenerated_prob``."""

    def __init__(self, clips, chunk_size: int, with_success: bool = False):
        rows = [clips.episode_range(ep) for ep in clips.episodes]
        self.frames = torch.cat([clips.episode_frames(ep).transpose(0, 1) for ep in clips.episodes])
        self.state = clips.columns[keys.STATE]
        actions = clips.columns[keys.ACTION]
        offsets = torch.arange(chunk_size)
        chunk_idx, masks = [], []
        for first, end in rows:
            idx = torch.arange(first, end)[:, None] + offsets  # (n, H)
            masks.append(idx < end)
            chunk_idx.append(idx.clamp(max=end - 1))
        self.action_mask = torch.cat(masks)
        self.actions = actions[torch.cat(chunk_idx)] * self.action_mask[..., None]
        self.task = [clips.tasks[int(i)] for i in clips.task_of]
        self.views = clips.views
        self.success = episode_success(clips) if with_success else None
        ends = torch.tensor([end - first for first, end in rows]).cumsum(0).tolist()
        self.episode_bounds = list(zip([0] + ends[:-1], ends))  # each episode's (first, end) rows here
        self.regenerated_frames: torch.Tensor | None = None  # (N, V, 3, h, w) uint8, as frames
        self.regenerated_state: torch.Tensor | None = None  # (N, S), as state

    def regenerate(self, world_model: Path, stats_root: Path | None, device: torch.device, batch_size: int = 32) -> None:
        """Fills the re-generations: each episode re-imagined by ``world_model`` open loop from its
        first frame, with the imagined env's default sampler (its steps and still-pixel threshold)."""
        episodes = [(self.frames[a:b].transpose(0, 1), self.actions[a:b, 0], self.state[a:b]) for a, b in self.episode_bounds]
        out = regenerate_episodes(episodes, world_model, stats_root, device, batch_size=batch_size, with_states=True)
        self.regenerated_frames = torch.cat([f.transpose(0, 1) for f, _ in out])
        self.regenerated_state = torch.cat([s for _, s in out]).to(self.state.dtype)

    def __len__(self) -> int:
        return len(self.frames)

    def batches(self, cfg, step: int, rank: int = 0, world: int = 1):
        """This process's batches from micro-step ``step`` on, in ``data.sampling``'s order, which
        depends only on (seed, step). ``cfg``: the training's config (``batch_size``, ``seed``,
        ``regenerated_prob``). ``index`` (B,): the frames' rows in this table."""
        per_epoch = batches_per_epoch(len(self), cfg.batch_size, world)
        while True:
            epoch, offset = divmod(step, per_epoch)
            for idx in epoch_batches(len(self), cfg.batch_size, world, cfg.seed, epoch)[offset:, rank]:
                frames, state = self.frames[idx], self.state[idx]
                if self.regenerated_frames is not None:
                    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 131 + rank + 7)
                    pick = torch.rand(len(idx), generator=gen) < cfg.regenerated_prob
                    frames = torch.where(pick.view(-1, 1, 1, 1, 1), self.regenerated_frames[idx], frames)
                    state = torch.where(pick[:, None], self.regenerated_state[idx], state)
                yield {"frames": frames.float() / 255.0, "state": state,
                       "action": self.actions[idx], "action_mask": self.action_mask[idx],
                       "task": [self.task[i] for i in idx.tolist()], "index": idx}
                step += 1


def episode_success(clips) -> torch.Tensor:
    """(N,) bool: the success label of the episode of each loaded frame, in the clips' row order."""
    table = clips.lerobot.hf_dataset
    if keys.EPISODE_SUCCESS not in table.column_names:
        raise KeyError(f"the dataset has no {keys.EPISODE_SUCCESS!r} column: no success label per episode")
    cols = table.select_columns(["episode_index", keys.EPISODE_SUCCESS]).with_format("torch")[:]
    if not torch.equal(cols["episode_index"].long(), clips.episode_of):
        raise ValueError("the dataset's rows are not the loaded episodes' rows, in order")
    return cols[keys.EPISODE_SUCCESS].bool().flatten()


def episode_seeds(root: Path, episodes: list[int]) -> list[int]:
    """The physics seed each of ``episodes`` (indices of the dataset at ``root``) was collected from:
    its ``keys.SEED`` column, which lerobot's edit and merge tools keep with the episode. Datasets
    collected before the column: the collection's first seed (meta/reverie.json, which those tools
    drop) plus the episode index, which holds only while no tool renumbered the episodes."""
    import json

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = Path(root)
    table = LeRobotDataset(LOCAL_REPO_ID, root=root).hf_dataset
    if keys.SEED in table.column_names:
        cols = table.select_columns(["episode_index", keys.SEED]).with_format("torch")[:]
        index, seed = cols["episode_index"].long(), cols[keys.SEED].long().flatten()
        of = dict(zip(index.tolist(), seed.tolist()))  # every row of an episode holds its seed
        missing = [e for e in episodes if e not in of]
        if missing:
            raise ValueError(f"{root} has no episodes {missing}")
        return [of[e] for e in episodes]
    meta = root / "meta" / "reverie.json"
    if not meta.is_file():
        raise ValueError(f"{root} records no physics seed per episode (no {keys.SEED!r} column and no {meta}): only a "
                         "dataset collected by reverie-collect can be replayed in physics from its episodes' starts; "
                         "re-collect it with reverie-collect, which records the seed column that lerobot's tools keep")
    first_seed = json.loads(meta.read_text())["collect"]["seed"]  # episode i was collected from seed first + i
    return [first_seed + int(e) for e in episodes]
