"""Scripted experts as chunked policies that run unchanged in physics and in imagination.

A robot's policy sees the cameras, the proprioceptive state and the task; it emits an action
chunk (B, H, A) and the env executes the whole chunk open loop. ``ScriptedPolicy`` wraps one
``ScriptedExpert`` per env: at an episode's start it reads the object state of the start frame
(``info["object_state"]``, recorded in the dataset as ``observation.environment_state``), and
from then on only the end-effector position in ``observation.state``. Inside a chunk it has no
new observation, so it dead-reckons: the end effector is taken to move ``step_gain`` metres per
unit of translation action per env step (0.0115 m, fitted on the Lift demonstrations: the
displacement per step regressed on the action, r >= 0.93 per axis).

Graded families of such policies (growing action noise, more failure modes) are what the
imagined-vs-physics evaluation ranks; ``policy_family`` lists the default one.

Dimension legend: B envs, H chunk length, A action dim (7), S state dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from simulator import keys
from simulator.physics.experts import ACTION_DIM, STEP_GAIN, ExpertConfig, ScriptedExpert
from simulator.physics.tasks import get_task


class ScriptedPolicy:
    """``num_envs`` scripted experts behind a chunked-policy interface.

    ``reset(obs, info, mask)`` starts new episodes (env b's expert draws its failure mode and
    noise from the policy's seed counter, so the same policy seed gives the same episodes in both
    simulators); ``select_action_chunk(obs)`` returns (B, H, A) float32.
    """

    def __init__(self, task: str, expert: ExpertConfig | None = None, num_envs: int = 1, chunk_size: int = 8,
                 seed: int = 0, step_gain: float = STEP_GAIN, name: str | None = None):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size=}")
        self.spec = get_task(task)
        if task == "pick_place_can":
            raise ValueError("the pick_place_can expert plans from the robosuite env (the bin's position), which "
                             "the imagined simulator does not have; scripted policies support lift and stack")
        self.config = expert or ExpertConfig()
        self.num_envs, self.chunk_size, self.step_gain = num_envs, chunk_size, step_gain
        self.action_dim = ACTION_DIM
        self.name = name or "scripted"
        self.experts: list[ScriptedExpert | None] = [None] * num_envs
        self.modes: list[str | None] = [None] * num_envs
        self._next_seed = seed

    def reset(self, obs: dict, info: dict, mask: torch.Tensor | np.ndarray | None = None,
              seeds: list[int] | None = None) -> None:
        """Starts the episodes of the envs in ``mask`` (default all) from their start object state.
        ``seeds`` (one per started env) fix each expert's failure mode and noise; default: the
        policy's own counter."""
        if "object_state" not in info:
            raise KeyError("a scripted policy plans from the start frame's object state: the env's reset info "
                           "must hold 'object_state' (B, D)")
        mask = np.ones(self.num_envs, bool) if mask is None else np.asarray(torch.as_tensor(mask).cpu(), bool)
        object_state = torch.as_tensor(info["object_state"]).cpu().double().numpy()
        if object_state.ndim == 2 and object_state.shape[1] == 0:
            raise ValueError("the starts carry no object state (their dataset records no "
                             f"{keys.ENV_STATE}), which a scripted expert plans from")
        if object_state.shape != (self.num_envs, self.spec.object_state_dim):
            raise ValueError(f"object_state must have shape (num_envs={self.num_envs}, D={self.spec.object_state_dim}), "
                             f"got {object_state.shape}")
        started = np.flatnonzero(mask)
        if seeds is None:
            seeds = list(range(self._next_seed, self._next_seed + len(started)))
            self._next_seed += len(started)
        if len(seeds) != len(started):
            raise ValueError(f"got {len(seeds)} seeds for {len(started)} envs to reset")
        for b, seed in zip(started, seeds):
            expert = ScriptedExpert(self.spec, self.config)
            self.modes[b] = expert.reset(object_state[b], None, int(seed))
            self.experts[b] = expert

    @torch.no_grad()
    def select_action_chunk(self, obs: dict) -> torch.Tensor:
        state = torch.as_tensor(obs[keys.STATE]).cpu().double().numpy()
        if state.shape[0] != self.num_envs:
            raise ValueError(f"observation.state has {state.shape[0]} rows, the policy drives {self.num_envs} envs")
        chunk = np.zeros((self.num_envs, self.chunk_size, self.action_dim), dtype=np.float32)
        for b, expert in enumerate(self.experts):
            if expert is None:
                raise RuntimeError("call reset(obs, info) before select_action_chunk")
            chunk[b] = expert.plan_chunk(state[b], self.chunk_size, self.step_gain)
        return torch.from_numpy(chunk)


@dataclass
class PolicySpec:
    """One member of a policy family: a name and its expert's behaviour."""

    name: str
    expert: ExpertConfig = field(default_factory=ExpertConfig)


def policy_family() -> list[PolicySpec]:
    """The default graded family for Lift: from the clean expert to one that always fails, with
    failure modes and action noise in between (each mode fails differently: missing the cube,
    dropping it, freezing). ``near-miss`` grasps 1.5-3 cm beside the cube, where physics decides
    by millimetres (about half hold): from the same starts its offsets are the same in both
    simulators, so its per-episode agreement asks imagination for the millimetres a learned
    policy's grasps turn on."""
    mix = lambda p: {"early_release": p / 3, "wrong_target": p / 3, "stall": p / 3}
    return [
        PolicySpec("expert", ExpertConfig()),
        PolicySpec("noisy-0.3", ExpertConfig(action_noise=0.3)),
        PolicySpec("fail-25%", ExpertConfig(failure_mix=mix(0.25))),
        PolicySpec("fail-50%+noise", ExpertConfig(action_noise=0.2, failure_mix=mix(0.5))),
        PolicySpec("fail-75%", ExpertConfig(failure_mix=mix(0.75))),
        PolicySpec("wrong-target", ExpertConfig(failure_mix={"wrong_target": 1.0})),
        PolicySpec("stall", ExpertConfig(failure_mix={"stall": 1.0})),
        PolicySpec("near-miss", ExpertConfig(failure_mix={"near_miss": 1.0})),
    ]
