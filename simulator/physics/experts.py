"""Scripted pick(-and-place) experts with configurable failure modes.

An expert reads the object state once, at the start of the episode (it is recorded in the
dataset as ``observation.environment_state``), plans waypoints from it, and then acts on
proprioception only (the end-effector position in ``observation.state``). So the same expert
runs in the physics simulator and in the learned one.

Failure modes are injected per episode, drawn from a mix, so a dataset has labelled failures:

- ``early_release``: opens the gripper as the lift starts and stops where it is (Lift counts a
  2 cm rise as success, and fingers take several steps to open, so it must stop rising);
- ``wrong_target``: grasps 6-9 cm beside the object;
- ``near_miss``: grasps 1.5-3 cm beside the object, and physics decides: on Lift about half of
  these grasps still hold the cube (over 12 seeds per offset: 9/12 succeed at 1.5 cm, 6/12 at
  2 cm, 5/12 at 2.5 cm, 0/12 at 3 cm). A dataset with this mode shows successes and failures a
  centimetre or two apart, which a world model must tell apart to score a policy that misses
  narrowly; the episode's label is the physics outcome. reverie-collect's default mix has 20%;
- ``stall``: freezes (zero motion) from a random point before the lift, for good;
- on top of any mode, ``action_noise`` adds Gaussian noise to the translation actions, in the share
  ``noisy_share`` of episodes (drawn by seed, independently of the failure mode). An expert's
  actions are a function of its state, so a dataset of them alone cannot teach a world model what
  other actions do: a policy's own actions then part from them (research log, session 16).
- ``chunked_share`` of episodes (drawn by seed) acts as a chunked policy does: every ``CHUNK``
  actions are planned at once from the chunk's first state, the end effector dead-reckoned
  ``STEP_GAIN`` m per unit action per step, and run without feedback (``plan_chunk``). A cloned
  policy acts so, and its approach and grasps part from an expert that corrects every step: on the
  same 40 near-miss starts and offsets the chunked episodes hold in 0.68 of physics episodes, the
  per-step ones in 0.78, and the demo's world model imagines them at 0.95 and 0.82 (research log,
  session 23).

Actions are robosuite OSC_POSE deltas, A = 7: (dx, dy, dz, droll, dpitch, dyaw) in [-1, 1]
(1 = 5 cm / 0.5 rad per step) and the gripper (-1 open, +1 closed). The experts never rotate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from simulator.physics.tasks import ExpertPlan, TaskSpec

ACTION_DIM = 7
FAILURE_MODES = ("none", "early_release", "wrong_target", "stall", "near_miss")
GRASP_OFFSETS = {"wrong_target": (0.06, 0.09), "near_miss": (0.015, 0.03)}  # m, horizontal, random direction
OPEN, CLOSED = -1.0, 1.0


class Phase(IntEnum):
    APPROACH = 0
    DESCEND = 1
    CLOSE = 2
    LIFT = 3
    TRANSPORT = 4
    LOWER = 5
    RELEASE = 6
    RETREAT = 7
    HOLD = 8


@dataclass
class ExpertConfig:
    """How the scripted expert behaves. Every field is per-episode randomness-free except noted."""

    action_noise: float = 0.0  # std of Gaussian noise on translation actions, every step of a noisy episode
    noisy_share: float = 1.0  # share of episodes with action noise, drawn by seed
    failure_mix: dict[str, float] = field(default_factory=dict)  # mode -> probability per episode
    gain: float = 12.0  # proportional gain from position error (m) to action units
    approach_height: float = 0.08  # m above the grasp point before descending
    close_steps: int = 10  # env steps spent closing (and opening) the gripper
    chunked_share: float = 0.0  # share of episodes planned in chunks of CHUNK actions, drawn by seed

    def __post_init__(self):
        if self.action_noise < 0:
            raise ValueError(f"action_noise must be >= 0, got {self.action_noise=}")
        for name in ("noisy_share", "chunked_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)=}")
        unknown = set(self.failure_mix) - set(FAILURE_MODES[1:])
        if unknown:
            raise ValueError(f"unknown failure modes {sorted(unknown)}; known: {list(FAILURE_MODES[1:])}")
        if any(p < 0 for p in self.failure_mix.values()) or sum(self.failure_mix.values()) > 1 + 1e-9:
            raise ValueError(f"failure_mix must be probabilities summing to <= 1, got {self.failure_mix=}")

    def sample_mode(self, seed: int) -> str:
        """The failure mode of the episode with this seed.

        Drawn from a golden-ratio (low-discrepancy) sequence over the seed rather than i.i.d.: any
        run of n consecutive seeds holds each mode within about 1/n of its share (i.i.d. draws are
        off by ~6 points at n = 50), so a dataset's failure fraction follows the configured mix.
        """
        u = _low_discrepancy(seed, _GOLDEN)
        edges = np.cumsum(list(self.failure_mix.values()))
        hit = int(np.searchsorted(edges, u, side="right"))
        return list(self.failure_mix)[hit] if hit < len(edges) else "none"

    def is_noisy(self, seed: int) -> bool:
        """Whether the episode with this seed gets action noise: a low-discrepancy draw as for the
        failure mode, over another irrational, so that noise and failure modes are independent."""
        return self.action_noise > 0 and _low_discrepancy(seed, _SILVER) < self.noisy_share

    def is_chunked(self, seed: int) -> bool:
        """Whether the episode with this seed is planned in chunks: a third irrational, independent
        of the failure mode and the noise."""
        return _low_discrepancy(seed, _BRONZE) < self.chunked_share


_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0
_SILVER = np.sqrt(2.0) - 1.0
_BRONZE = (np.sqrt(13.0) - 3.0) / 2.0
CHUNK = 8  # actions a chunked episode plans at once: the chunk of the project's policies
STEP_GAIN = 0.0115  # m of end-effector motion per unit translation action per step (Lift data)


def _low_discrepancy(seed: int, irrational: float) -> float:
    """The seed's point in [0, 1) of the additive recurrence over ``irrational``."""
    return (seed * irrational + 0.5) % 1.0


class ScriptedExpert:
    """A waypoint state machine for one episode of one task."""

    def __init__(self, spec: TaskSpec, config: ExpertConfig | None = None):
        self.spec = spec
        self.config = config or ExpertConfig()
        self.mode, self.noisy = "none", False

    def reset(self, object_state: np.ndarray, env, seed: int) -> str:
        """Plans the episode from the start object state; returns the failure mode drawn."""
        self.rng = np.random.default_rng(seed)
        self.mode = self.config.sample_mode(seed)
        self.noisy = self.config.is_noisy(seed)
        self.chunked = self.config.is_chunked(seed)
        plan = self.spec.plan(np.asarray(object_state, dtype=np.float64), env)
        if self.mode in GRASP_OFFSETS:
            angle = self.rng.uniform(0, 2 * np.pi)
            offset = self.rng.uniform(*GRASP_OFFSETS[self.mode]) * np.array([np.cos(angle), np.sin(angle), 0.0])
            plan = ExpertPlan(grasp=plan.grasp + offset, place=plan.place, lift=plan.lift)
        self.plan = plan
        self.phase, self.phase_steps, self.gripper = Phase.APPROACH, 0, OPEN
        # Stall before the lift: stalling once the object is rising may still count as success.
        self.stall_phase = Phase(self.rng.integers(Phase.APPROACH, Phase.CLOSE + 1))
        self.stall_delay = int(self.rng.integers(0, 8))
        self.release_delay = int(self.rng.integers(0, 2))  # lift steps before an early release
        self.stalled = False
        self.released = False
        self.hover = None
        return self.mode

    def plan_chunk(self, state: np.ndarray, n: int = CHUNK, step_gain: float = STEP_GAIN) -> np.ndarray:
        """The next ``n`` actions (n, A) planned from ``state`` alone, as a chunked policy plans:
        the end effector taken to move ``step_gain`` m per unit translation action per step."""
        s = np.array(state, dtype=np.float64)
        chunk = np.zeros((n, ACTION_DIM))
        for t in range(n):
            chunk[t] = self.act(s)
            s[:3] += step_gain * chunk[t, :3]
        return chunk

    def act(self, state: np.ndarray) -> np.ndarray:
        """One action (A,) from proprioception (S,) (end-effector position in state[:3])."""
        eef = np.asarray(state[:3], dtype=np.float64)
        target = self._step_phase(eef)
        action = np.zeros(ACTION_DIM)
        if self.mode == "stall" and (self.stalled or self._stall_now()):
            self.stalled = True
        else:
            delta = self.config.gain * (target - eef)
            norm = np.linalg.norm(delta)
            action[:3] = delta / max(norm, 1.0)
        if self.noisy:
            action[:3] += self.rng.normal(0.0, self.config.action_noise, 3)
        action[:3] = np.clip(action[:3], -1.0, 1.0)
        action[6] = self.gripper
        return action

    def _stall_now(self) -> bool:
        return self.phase == self.stall_phase and self.phase_steps >= self.stall_delay

    def _step_phase(self, eef: np.ndarray) -> np.ndarray:
        """Advances the state machine and returns the current position target."""
        p, plan = self.phase, self.plan
        above_grasp = plan.grasp + [0, 0, self.config.approach_height]
        lifted = plan.grasp + [0, 0, plan.lift]
        targets = {
            Phase.APPROACH: above_grasp,
            Phase.DESCEND: plan.grasp,
            Phase.CLOSE: plan.grasp,
            Phase.LIFT: lifted,
            Phase.HOLD: lifted,
        }
        if plan.place is not None:
            carry = np.array([plan.place[0], plan.place[1], max(lifted[2], plan.place[2] + 0.05)])
            targets |= {
                Phase.TRANSPORT: carry,
                Phase.LOWER: plan.place,
                Phase.RELEASE: plan.place,
                Phase.RETREAT: plan.place + [0, 0, 0.1],
            }
        err = np.linalg.norm(targets[p] - eef)
        done = {
            Phase.APPROACH: err < 0.015,
            Phase.DESCEND: err < 0.008 or self.phase_steps > 40,
            Phase.CLOSE: self.phase_steps >= self.config.close_steps,
            Phase.LIFT: err < 0.02,
            # Loaded and far from the base the arm settles ~2-3 cm off; the bin is ~20 cm wide.
            Phase.TRANSPORT: err < 0.03 or self.phase_steps > 80,
            Phase.LOWER: err < 0.01 or self.phase_steps > 40,
            Phase.RELEASE: self.phase_steps >= self.config.close_steps,
            Phase.RETREAT: False,
            Phase.HOLD: False,
        }[p]
        if p in (Phase.CLOSE, Phase.LIFT, Phase.TRANSPORT, Phase.LOWER):
            self.gripper = CLOSED
        if p == Phase.RELEASE:
            self.gripper = OPEN
        if self.mode == "early_release" and p == Phase.LIFT and self.phase_steps >= self.release_delay:
            self.released = True
            self.hover = eef.copy() if self.hover is None else self.hover
        if self.released:
            self.gripper = OPEN  # once released, it never grasps again and stays where it let go
            return self.hover
        if done:
            nxt = Phase.HOLD if (p == Phase.LIFT and plan.place is None) else Phase(p + 1)
            self.phase, self.phase_steps = nxt, 0
        else:
            self.phase_steps += 1
        return targets[p]
