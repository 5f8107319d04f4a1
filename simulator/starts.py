"""``StartFrames``: the real frames imagined episodes start from (dataset episode starts or
keyframes inside episodes, or frames rendered by the physics env, for matched comparisons).

Dimension legend as in ``simulator.env``: N starts, V views, L' frames before a start, S state dim,
D object-state dim, h x w image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from simulator import keys


@dataclass
class StartFrames:
    """Real frames to start imagined episodes from; N starts.

    frames (N, V, 3, h, w) uint8: the start frame of every view; history (N, V, L', 3, h, w) uint8
    or None: frames before it at the world model's frame rate, oldest first (None: the start is an
    episode's first frame); first_frames (N, V, 3, h, w) uint8: the episode's first frames; state
    (N, S) raw proprioception at the start (and history_state (N, L', S) before it); object_state
    (N, D) at the start, (N, 0) where the data records none (a real robot's): scripted experts plan
    from it, the imagined env never reads it; task: N strings.
    """

    frames: Tensor
    first_frames: Tensor
    state: Tensor
    object_state: Tensor
    task: list[str]
    history: Tensor | None = None
    history_state: Tensor | None = None

    def __post_init__(self):
        N = self.frames.shape[0]
        if self.frames.dtype != torch.uint8 or self.frames.ndim != 5 or self.frames.shape[2] != 3:
            raise ValueError(f"start frames must be uint8 of shape (N, V, 3, h, w), got {self.frames.dtype} "
                             f"{tuple(self.frames.shape)}")
        if len(self.task) != N or self.state.shape[0] != N or self.object_state.shape[0] != N:
            raise ValueError(f"start frames, states, object states and tasks must have one row per start ({N}), got "
                             f"{self.state.shape[0]}, {self.object_state.shape[0]}, {len(self.task)}")

    def __len__(self) -> int:
        return self.frames.shape[0]

    @classmethod
    def from_observation(cls, obs: dict, info: dict, views: tuple[str, ...]) -> StartFrames:
        """The first observation of physics episodes (``PhysicsEnv.reset``): matched starts."""
        missing = [v for v in views if keys.image_key(v) not in obs]
        if missing:
            raise KeyError(f"the observation has no view(s) {missing}: render them in the physics env (views=...)")
        frames = torch.stack([(obs[keys.image_key(v)] * 255).round().to(torch.uint8) for v in views], 1)
        return cls(frames=frames, first_frames=frames.clone(), state=obs[keys.STATE].float().clone(),
                   object_state=info["object_state"].float().clone(), task=list(obs[keys.TASK]))

    @classmethod
    def cat(cls, parts: list[StartFrames]) -> StartFrames:
        """The starts of several StartFrames, one after the other."""
        optional = lambda name: (torch.cat([getattr(p, name) for p in parts])  # noqa: E731
                                 if all(getattr(p, name) is not None for p in parts) else None)
        return cls(**{name: torch.cat([getattr(p, name) for p in parts])
                      for name in ("frames", "first_frames", "state", "object_state")},
                   task=[t for p in parts for t in p.task], history=optional("history"),
                   history_state=optional("history_state"))

    def take(self, idx: list[int]) -> StartFrames:
        """The starts at ``idx``, in that order (an index may repeat)."""
        pick = lambda x: None if x is None else x[list(idx)]
        return StartFrames(frames=pick(self.frames), first_frames=pick(self.first_frames), state=pick(self.state),
                           object_state=pick(self.object_state), task=[self.task[i] for i in idx],
                           history=pick(self.history), history_state=pick(self.history_state))

    @classmethod
    def from_dataset(cls, clips, episodes: list[int] | None = None, every: int | None = None,
                     history: int = 8, stride: int = 1) -> StartFrames:
        """Starts from a ``ClipDataset``: each episode's first frame, and with ``every`` also every
        ``every``-th frame inside it (keyframes), with ``history`` earlier frames ``stride`` apart."""
        ENV_STATE, STATE = keys.ENV_STATE, keys.STATE
        cols = clips.columns
        fields: dict[str, list] = {k: [] for k in ("frames", "history", "first", "state", "hstate", "obj", "task")}
        for ep in episodes if episodes is not None else clips.episodes:
            first_row, end = clips.episode_range(ep)
            length = end - first_row
            times = range(0, length, every) if every else [0]
            task = clips.tasks[int(clips.task_of[first_row])]
            for t in times:
                idx = [max(0, t - (history - i) * stride) for i in range(history)] + [t]
                decoded = clips.decode(ep, sorted(set(idx + [0])))
                pos = {f: i for i, f in enumerate(sorted(set(idx + [0])))}
                fields["history"].append(decoded[:, [pos[i] for i in idx[:-1]]])
                fields["frames"].append(decoded[:, pos[t]])
                fields["first"].append(decoded[:, pos[0]])
                fields["state"].append(cols[STATE][first_row + t])
                fields["hstate"].append(cols[STATE][[first_row + i for i in idx[:-1]]])
                fields["obj"].append(cols[ENV_STATE][first_row + t] if ENV_STATE in cols else torch.zeros(0))
                fields["task"].append(task)
        stack = lambda k: torch.stack(fields[k])  # noqa: E731
        return cls(frames=stack("frames"), first_frames=stack("first"), state=stack("state"),
                   object_state=stack("obj"), task=fields["task"], history=stack("history") if history else None,
                   history_state=stack("hstate") if history else None)
