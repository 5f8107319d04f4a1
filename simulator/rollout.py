"""The one episode loop: B episodes of an env (``PhysicsEnv`` or ``ImaginedEnv``) run together,
chunk by chunk, until every one of them ended.

    rollout = Rollout(env, seed=0)
    policy.reset(rollout.obs, rollout.info, seeds=[0, 1])
    for step in rollout.run(policy.select_action_chunk):
        ...  # step.obs, step.actions, step.reward, step.alive, step.info

Evaluation (``eval.policy.run_episodes``), RL collection (``train.rl.base.collect``), the
notebooks' imagined rollouts, the benchmarks and the data collector all run their episodes
through it; what each keeps of a step is its own business. As DIAMOND runs one loop for both
of its simulators, the two envs share one contract, so the loop never asks which one it drives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Step:
    """One env step of B episodes. Only the episodes ``alive`` before it count: an env whose
    episode ended still steps (the envs step together) until every episode ended."""

    obs: dict  # the observation the actions were chosen from
    actions: Tensor  # (B, H, A) the chunk executed
    reward: Tensor  # (B,)
    terminated: Tensor  # (B,) bool: solved at this step
    truncated: Tensor  # (B,) bool
    info: dict  # the env's info after the step
    alive: Tensor  # (B,) bool: the episode had not ended before this step


class Rollout:
    """One round of ``env.num_envs`` episodes from ``env.reset(seed=seed, options=options)``.

    ``obs`` and ``info`` are the env's latest (after the reset until the first step), ``done``
    which episodes ended and ``solved`` which of them ended terminated (the env's success)."""

    def __init__(self, env, seed: int | None = None, options: dict | None = None):
        self.env = env
        self.obs, self.info = env.reset(seed=seed, options=options)
        self.start_info = self.info
        self.done = torch.zeros(env.num_envs, dtype=torch.bool)
        self.solved = torch.zeros(env.num_envs, dtype=torch.bool)

    def run(self, act: Callable[[dict], Tensor]) -> Iterator[Step]:
        """Steps the env with ``act(obs)`` (a (B, H, A) action chunk) until every episode ended,
        yielding each step; a caller may stop early by leaving the loop."""
        while not self.done.all():
            obs = self.obs
            actions = act(obs)
            self.obs, reward, terminated, truncated, self.info = self.env.step(actions)
            alive = ~self.done
            self.solved |= terminated & alive
            self.done |= terminated | truncated
            yield Step(obs, actions, reward, terminated, truncated, self.info, alive)
