"""Advantage-conditioned policy improvement in imagination (RECAP of pi0.6, RISE).

No likelihoods and no ratios: the policy learns with its own flow-matching loss what a better
than average chunk looks like, told apart by words in its task string. Each iteration:

1. groups of ``group_size`` imagined episodes start from identical frames (as GRPO), the policy
   acting as it normally does (a flow policy: its ODE from fresh noise, not the stochastic kernel
   that GRPO and PPO sample through, whose extra noise it would learn to imitate); an episode's
   advantage is its return standardised within its group; groups whose returns are all equal
   say nothing and are dropped;
2. the advantage is binned (``advantage_bins``: with 2 bins, negative / positive) and the bin
   becomes words appended to the task (``advantage_words``), left out with probability
   ``dropout`` so that the plain task keeps meaning the average behaviour;
3. the policy trains on batches that mix imagined chunks (the observation the chunk was chosen
   from, the executed actions) with real dataset chunks (``real_share`` of each batch), whose bin
   is their episode's success label: a successful episode gets the top bin, a failed one the
   bottom bin. The real share keeps the policy anchored to real data where the world model errs;
4. afterwards the policy acts with the top bin's words (``set_task_suffix``), also in the next
   iteration's rollouts and once saved.

Works with any policy that has ``loss(obs, actions, action_mask, generator)`` and
``set_task_suffix`` (``policy.flow.FlowPolicy``); it does not need log-probabilities. Lerobot
policies have no ``set_task_suffix`` (Diffusion Policy reads no text): they fit filtered imitation.

A policy whose ``obs_steps`` is 2 (a lerobot Diffusion Policy with lerobot-train's default
``n_obs_steps``) trains on what lerobot's dataset would give it: each chunk's observation with the
one an env step before (``keys.previous_key``), and its actions from the action taken there. In
a rollout that action is the previous chunk's last one; in the dataset the frame before's. At an
episode's first step there is none: the observation before is the current one (as both envs and
lerobot's dataset give it) and the action is padding (``previous_actions``, ``previous_rows``).

Dimension legend: T chunk steps, B envs, n batch, V views, h x w image size, S state dim,
H chunk length, A action dim.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from policy.base import rl_algorithms_for
from simulator import keys
from train.rl.base import Algorithm, AlgorithmConfig, Rollouts, group_advantages, group_starts


@AlgorithmConfig.register_subclass("advantage_conditioned")
@dataclass
class AdvantageConditionedConfig(AlgorithmConfig):
    """Advantage conditioning (RECAP): the policy's own loss on imagined chunks labelled by advantage
    words. +0.05 over three seeds in imagination, inside noise (docs/benchmarks.md)."""

    group_size: int = 8  # envs per group (the same start frames)
    bins: int = 2  # advantage bins; the policy acts with the top one
    dropout: float = 0.3  # probability that a training chunk gets the plain task (no bin words)
    # Share of each batch drawn from the real dataset: 0 = imagined only; 1 = the offline ablation,
    # the dataset alone (the imagined rollouts unused), which says what imagination adds.
    real_share: float = 0.6
    steps_per_iteration: int = 20  # gradient steps per update
    batch_size: int = 64  # chunks per gradient step, imagined and real together
    lr: float = 1e-4  # AdamW's, on every trainable parameter of the policy
    grad_clip: float = 1.0  # on the policy's gradient norm
    shift: int = 4  # random image shift in pixels (DrQ), as in behaviour cloning (0 = none)
    memory: int = 1  # iterations whose trained imagined chunks are drawn from (1 = this iteration's only)

    def __post_init__(self):
        if self.memory < 1:
            raise ValueError(f"memory counts iterations, the current one included: need >= 1, got {self.memory=}")
        if self.group_size < 2:
            raise ValueError(f"a group needs >= 2 rollouts to have an advantage, got {self.group_size=}")
        if self.bins < 2:
            raise ValueError(f"advantage conditioning needs >= 2 bins, got {self.bins=}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout=}")
        if not 0 <= self.real_share <= 1:
            raise ValueError(f"real_share must be in [0, 1], got {self.real_share=}")
        for name in ("steps_per_iteration", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")
        if self.lr <= 0 or self.grad_clip <= 0 or self.shift < 0:
            raise ValueError(f"need lr > 0, grad_clip > 0, shift >= 0, got {self.lr=} {self.grad_clip=} {self.shift=}")


def advantage_words(bin: int) -> str:
    """The words appended to a task to condition the policy on advantage bin ``bin``."""
    return f" advantage {bin}"


def bin_edges(bins: int) -> Tensor:
    """(bins - 1,) fixed edges on the standardised advantage: the standard normal's quantiles at
    i / bins, equal-mass bins for advantages ~ N(0, 1), independent of the batch. 2 bins: [0]."""
    if bins < 2:
        raise ValueError(f"need >= 2 bins, got {bins=}")
    return torch.distributions.Normal(0.0, 1.0).icdf(torch.arange(1, bins) / bins)


def advantage_bins(advantages: Tensor, bins: int) -> Tensor:
    """(B,) standardised advantages -> (B,) long bins in [0, bins), higher is better. An
    advantage on an edge goes to the lower bin: with 2 bins only positive advantages reach the top."""
    return torch.bucketize(advantages.float(), bin_edges(bins), right=False)


def success_bins(success: Tensor, bins: int) -> Tensor:
    """(n,) bool episode success of real chunks -> (n,) long bins: the top one for a successful
    episode, the bottom one for a failed one."""
    return torch.where(success.bool(), bins - 1, 0)


def conditioned_tasks(tasks: list[str], bins: Tensor, dropout: float, generator: torch.Generator) -> list[str]:
    """Each task (n) with its bin's words, or plain with probability ``dropout``."""
    plain = (torch.rand(len(tasks), generator=generator) < dropout).tolist()
    return [t if p else t + advantage_words(int(k)) for t, k, p in zip(tasks, bins.tolist(), plain)]


def real_frames(dataset, views: tuple[str, ...], chunk_size: int):
    """The training episodes of ``dataset`` (a ``data.clips.DatasetConfig``) in memory, as
    ``views``, in env units, with each frame's episode success: the real share of the batches."""
    from data.episodes import FrameTable

    train_episodes, _ = dataset.split()
    clips = replace(dataset, views=tuple(views)).clips(train_episodes, context=1, horizon=1, normalize=False,
                                                       cache_frames=True)
    return FrameTable(clips, chunk_size, with_success=True)


def previous_rows(frames) -> tuple[Tensor, Tensor]:
    """Each row's row one env step before in ``frames`` (a ``FrameTable``: episodes in consecutive
    rows), and whether it has one: (N,) long, (N,) bool. An episode's first frame has none and gets
    its own row, as lerobot's dataset clamps a frame index to the episode."""
    has = torch.ones(len(frames), dtype=torch.bool)
    has[[first for first, _ in frames.episode_bounds]] = False
    return torch.arange(len(frames)) - has.long(), has


def previous_actions(actions: Tensor) -> tuple[Tensor, Tensor]:
    """The action executed one env step before each chunk of a rollout, and whether there was one:
    (T, B, H, A) -> (T, B, A), (T, B) bool. The previous chunk's last action; none before an
    episode's first chunk (t = 0: ``collect`` starts every episode there, so within an episode
    t > 0 follows a whole chunk)."""
    before = torch.cat([torch.zeros_like(actions[:1, :, -1]), actions[:-1, :, -1]])
    has = torch.ones(actions.shape[:2], dtype=torch.bool)
    has[0] = False
    return before, has


def imitated_steps_of(policy) -> int:
    """Action steps from the current one that ``policy``'s loss imitates: its ``imitated_steps``
    (a lerobot policy's horizon, which may run past the executed chunk), else its chunk: a
    FlowPolicy's spec, or a ``chunk_size`` attribute."""
    value = getattr(policy, "imitated_steps", None)
    if value is None:
        value = getattr(getattr(policy, "spec", None), "chunk_size", None)
    if value is None:
        value = getattr(policy, "chunk_size", None)
    if value is not None:
        return int(value)
    raise TypeError(f"cannot tell the action chunk of a {type(policy).__name__}: it needs imitated_steps or chunk_size")


class AdvantageConditioned(Algorithm):
    name = "advantage_conditioned"
    needs_log_prob = False
    needs = ("loss", "set_task_suffix")  # what the policy must have

    def __init__(self, policy, config: AdvantageConditionedConfig, views: tuple[str, ...], dataset=None,
                 frames=None):
        """``dataset`` (a ``data.clips.DatasetConfig``: its training episodes are loaded) or
        ``frames`` (a ``data.episodes.FrameTable`` with ``success``) gives the real data; neither
        is needed with ``real_share`` 0."""
        missing = [m for m in self.needs if not callable(getattr(policy, m, None))]
        if missing:
            name, fits = type(policy).__name__, rl_algorithms_for(policy)
            what = "its own flow/diffusion loss(obs, actions, action_mask, generator)" + (
                " and conditions it on words appended to its task with set_task_suffix" if len(self.needs) > 1 else "")
            raise TypeError(f"{name} has no {' or '.join(missing)}: {self.name} trains a policy with {what} "
                            f"(policy.flow.FlowPolicy has both). Algorithms that train a {name}: "
                            f"{', '.join(fits) or 'none'}")
        super().__init__(policy, config, views)
        self.steps = imitated_steps_of(policy)  # each imitated window's actions from its step on
        if dataset is not None and frames is not None:
            raise ValueError("give the real data once: dataset= or frames=, not both")
        if frames is None and dataset is not None and config.real_share > 0:
            frames = real_frames(dataset, self.views, self.steps)
        if config.real_share > 0:
            if frames is None:
                raise ValueError(f"{config.real_share=} needs real data: pass dataset= or frames=")
            if getattr(frames, "success", None) is None:
                raise ValueError("the real frames carry no episode success (build FrameTable(..., with_success=True))")
            if tuple(frames.views) != self.views:
                raise ValueError(f"the real frames hold the views {tuple(frames.views)}, the policy reads {self.views}")
        self.frames = frames if config.real_share > 0 else None
        # the policy reads the observation one env step before and imitates the action taken there
        self.history = getattr(policy, "obs_steps", 1) > 1
        self.previous = previous_rows(self.frames) if self.history and self.frames is not None else None
        self.real_pool: Tensor | None = None  # the frames the real share draws from (None: every frame)
        self.memory: deque[dict] = deque(maxlen=config.memory)  # the trained chunks of the last iterations
        self.opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0)
        self.updates = 0

    @property
    def top_bin(self) -> int:
        return self.config.bins - 1

    def start_index(self, num_envs: int, num_starts: int, generator: torch.Generator) -> Tensor:
        return group_starts(num_envs, num_starts, self.config.group_size, generator)

    def update(self, rollouts: Rollouts, generator: torch.Generator) -> dict:
        cfg = self.config
        advantages, kept = group_advantages(rollouts.returns, cfg.group_size)
        episode_bins = advantage_bins(advantages, cfg.bins)  # (B,)
        t_idx, b_idx = torch.nonzero(rollouts.alive & self._trained(kept, episode_bins)[None], as_tuple=True)
        chunks = self._chunks(rollouts, t_idx, b_idx, episode_bins, self.steps) | self._history(rollouts, t_idx, b_idx)
        pool = self._remember(chunks)
        n_real = round(cfg.real_share * cfg.batch_size) if self.frames is not None else 0
        n_imagined = cfg.batch_size - n_real if len(pool["actions"]) else 0
        metrics = {"groups_kept": kept.float().mean().item(), "samples": len(t_idx), "pool": len(pool["actions"]),
                   "top_bin_share": (episode_bins[kept] == self.top_bin).float().mean().item() if kept.any() else 0.0}
        if n_real + n_imagined == 0:  # every group's returns were equal and there is no real data
            return metrics
        totals = {"flow_loss": 0.0, "grad_norm": 0.0}
        device = next(iter(self.policy.parameters())).device
        self._set_task_suffix("")  # the batches carry their conditioned tasks explicitly
        self.policy.train()
        try:
            for _ in range(cfg.steps_per_iteration):
                imagined = self._imagined(pool, n_imagined, generator)
                real = self._real(n_real, generator)
                obs, actions, mask = self._batch([p for p in (imagined, real) if p is not None], generator)
                loss = self.policy.loss(obs, actions.to(device), mask.to(device), generator)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
                self.opt.step()
                totals["flow_loss"] += loss.item() / cfg.steps_per_iteration
                totals["grad_norm"] += float(grad_norm) / cfg.steps_per_iteration
        finally:
            self.policy.eval()
            self._set_task_suffix(self._acting_suffix())
        self.updates += 1
        return metrics | totals | {"real_share": n_real / (n_real + n_imagined)}

    def _trained(self, kept: Tensor, episode_bins: Tensor) -> Tensor:
        """(B,) bool: the episodes whose chunks the policy trains on (every kept one, each with its bin)."""
        return kept

    def _acting_suffix(self) -> str:
        return advantage_words(self.top_bin)  # act as the best bin

    def _set_task_suffix(self, suffix: str) -> None:
        self.policy.set_task_suffix(suffix)

    def _condition(self, tasks: list[str], bins: Tensor, generator: torch.Generator) -> list[str]:
        return conditioned_tasks(tasks, bins, self.config.dropout, generator)

    @staticmethod
    def _chunks(rollouts: Rollouts, t_idx: Tensor, b_idx: Tensor, episode_bins: Tensor, steps: int) -> dict:
        """The imagined chunks at steps (t_idx, b_idx) (N,), each with its episode's bin: the
        ``steps`` actions from each chunk's step on, the chunk's then those of the chunks after it
        (masked past the episode's last chunk, as lerobot's dataset pads past an episode's end)."""
        T, B, H, A = rollouts.actions.shape
        follow = -(-steps // H)  # chunks the window reaches into, its own included
        actions = torch.cat([rollouts.actions.float(), torch.zeros(follow - 1, B, H, A)])
        alive = torch.cat([rollouts.alive, torch.zeros(follow - 1, B, dtype=torch.bool)])
        window = torch.cat([actions[t_idx + k, b_idx] for k in range(follow)], 1)[:, :steps]
        # the chunk itself counts, whatever the episode did after it
        mask = torch.cat([(alive[t_idx + k, b_idx] | (k == 0))[:, None].expand(-1, H) for k in range(follow)], 1)
        return {"images": rollouts.images[t_idx, b_idx], "state": rollouts.state[t_idx, b_idx].float(),
                "task": [rollouts.task[i] for i in b_idx.tolist()], "actions": window * mask[:, :steps, None],
                "mask": mask[:, :steps], "bins": episode_bins[b_idx]}

    def _history(self, rollouts: Rollouts, t_idx: Tensor, b_idx: Tensor) -> dict:
        """What a policy with two observation steps also reads at steps (t_idx, b_idx) (N,): the
        observation one env step before and the action taken there, with whether there was one."""
        if not self.history:
            return {}
        if rollouts.previous_images is None:
            raise ValueError("the policy reads the observation one env step before, and the rollouts hold "
                             "none (the imagined env gives it only with a world model of frame stride 1)")
        before, has = previous_actions(rollouts.actions.float())
        return {"previous_images": rollouts.previous_images[t_idx, b_idx],
                "previous_state": rollouts.previous_state[t_idx, b_idx].float(),
                "previous_action": before[t_idx, b_idx], "previous_valid": has[t_idx, b_idx]}

    def _remember(self, chunks: dict) -> dict:
        """The pool the imagined share is drawn from: ``chunks`` with those of the last
        ``memory`` - 1 iterations (ReST's growing dataset)."""
        self.memory.append(chunks)
        parts = list(self.memory)
        return {k: [x for p in parts for x in p[k]] if isinstance(v, list) else torch.cat([p[k] for p in parts])
                for k, v in chunks.items()}

    @staticmethod
    def _imagined(pool: dict, n: int, generator: torch.Generator) -> dict | None:
        """n imagined chunks drawn with replacement from ``pool``."""
        if n == 0:
            return None
        pick = torch.randint(len(pool["actions"]), (n,), generator=generator)
        return {k: [v[i] for i in pick.tolist()] if isinstance(v, list) else v[pick] for k, v in pool.items()}

    def _real(self, n: int, generator: torch.Generator) -> dict | None:
        """n real chunks; a successful episode's frames get the top bin, a failed one's the bottom."""
        if n == 0:
            return None
        f = self.frames
        pool = self.real_pool
        pick = torch.randint(len(f) if pool is None else len(pool), (n,), generator=generator)
        pick = pick if pool is None else pool[pick]
        real = {"images": f.frames[pick], "state": f.state[pick].float(),
                "task": [f.task[i] for i in pick.tolist()], "actions": f.actions[pick].float(),
                "mask": f.action_mask[pick], "bins": success_bins(f.success[pick], self.config.bins)}
        if self.previous is not None:  # the frame before and its action (the first of its chunk)
            rows, has = self.previous[0][pick], self.previous[1][pick]
            real |= {"previous_images": f.frames[rows], "previous_state": f.state[rows].float(),
                     "previous_action": f.actions[rows, 0].float(), "previous_valid": has}
        return real

    def _batch(self, parts: list[dict], generator: torch.Generator) -> tuple[dict, Tensor, Tensor]:
        """The policy's observation (every view shifted, tasks conditioned), actions (n, H, A) and
        mask (n, H) of the parts put together; with ``history`` the obs also holds the step before
        and the actions and mask start there: (n, 1 + H, A), (n, 1 + H)."""
        from train.policy import random_shift

        for key in ("images", "actions"):
            if len(shapes := {tuple(p[key].shape[1:]) for p in parts}) > 1:
                raise ValueError(f"imagined and real chunks differ in {key} shape: {sorted(shapes)}")
        cat = lambda key: torch.cat([p[key] for p in parts])
        images = cat("images").float() / 255.0  # (n, V, 3, h, w)
        if self.history:  # the step before beside each view's channels: one shift moves both steps
            images = torch.cat([cat("previous_images").float() / 255.0, images], 2)  # (n, V, 6, h, w)
        images = random_shift(images.flatten(0, 1), self.config.shift, generator).view(images.shape)
        tasks = self._condition([t for p in parts for t in p["task"]], cat("bins"), generator)
        obs = {keys.image_key(v): images[:, i, -3:] for i, v in enumerate(self.views)}
        obs |= {keys.STATE: cat("state"), keys.TASK: tasks}
        actions, mask = cat("actions"), cat("mask")
        if not self.history:
            return obs, actions, mask
        obs |= {keys.previous_key(keys.image_key(v)): images[:, i, :3] for i, v in enumerate(self.views)}
        obs[keys.previous_key(keys.STATE)] = cat("previous_state")
        actions = torch.cat([cat("previous_action")[:, None], actions], 1)  # (n, 1 + H, A)
        return obs, actions, torch.cat([cat("previous_valid")[:, None], mask], 1)

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "updates": self.updates, "memory": list(self.memory)}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.updates = state["updates"]
        self.memory.extend(state.get("memory", []))
        if self.updates:  # the suffix lives in the policy's config, which a weights-only restore loses
            self._set_task_suffix(self._acting_suffix())
