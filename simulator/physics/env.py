"""A batched, torch-native physics environment with the interface of the imagined simulator.

``PhysicsEnv`` runs ``num_envs`` robosuite environments of one task in this process and speaks
the gymnasium 5-tuple over action chunks:

    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(actions)  # actions (B, H, A)

Dimension legend: B envs, H action-chunk length, A action dim (7), S state dim (8),
D object-state dim, V views, C=3 channels, h x w image size.

- ``obs``: ``observation.images.<view>`` (B, 3, h, w) float32 in [0, 1],
  ``observation.state`` (B, S) float32, ``task`` list[str] — what a robot's policy sees —, and
  ``observation.environment_state`` (B, D), the ground-truth object state, for lerobot policies
  trained on a dataset that records it (the imagined env never gives it). Each tensor also one env
  step before, under ``keys.previous_key(key)`` (after a reset: the current one repeated, as
  lerobot fills its observation queues): what a policy with ``n_obs_steps == 2`` conditions on.
- ``reward`` (B,): 1.0 if the task was solved during the chunk (sparse; the imagined env uses
  progress gains instead). ``terminated`` (B,): solved. ``truncated`` (B,): horizon reached.
- ``info``: ``success`` (B,) bool, ``object_state`` (B, D), ``stage`` (B,) long, and the keys
  the imagined env reports too: ``success_prob`` (B,) (0 or 1 here), ``progress`` (B,) (the
  fraction of physics milestones reached),
  ``frames`` {view: (B, H, 3, h, w) uint8} every frame rendered during the chunk (the first
  frame after each action), ``frames_valid`` (B, H) bool (False after an env finished
  mid-chunk), ``states`` (B, H, S) float32 the state after each action (step only; padded like
  the frames), ``steps`` (B,) env steps since reset.

Envs that finished stay finished (their observation is frozen) until reset; ``reset(options=
{"reset_mask": mask})`` resets only some of them, and ``autoreset=True`` does it automatically
(the last observation before the reset is then in ``info["final_observation"]``).
Determinism: ``reset(seed=s)`` gives env b the seed s + b, and later resets continue the count;
``reset(options={"seeds": seeds})`` gives each reset env its own; the same seeds give the same
frames.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering on a CPU (Mesa) or GPU
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import numpy as np
import torch

from simulator import keys
from simulator.physics.experts import ACTION_DIM
from simulator.physics.render import RENDER_QUALITIES, SceneRenderer
from simulator.physics.tasks import TaskSpec, get_task, object_bodies, slot_poses


@dataclass
class PhysicsEnvConfig:
    task: str = "lift"  # one of simulator.physics.tasks.TASKS
    num_envs: int = 1
    views: tuple[str, ...] = ("front", "wrist")  # names from the task's cameras; () = physics only, no rendering
    height: int = 64
    width: int = 64
    render_quality: str = "fast"  # "fast" (arm drawn with collision meshes) or "full"
    max_steps: int | None = None  # horizon in env steps; None = the task's default
    autoreset: bool = False
    terminate_on_success: bool = True  # False: keep simulating after success until the horizon

    def __post_init__(self):
        spec = get_task(self.task)
        unknown = [v for v in self.views if v not in spec.cameras]
        if unknown:
            raise ValueError(f"unknown camera view(s) {unknown} for task {self.task!r}; known: {sorted(spec.cameras)}")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"resolution must be positive, got {self.height=} {self.width=}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs=}")
        if self.render_quality not in RENDER_QUALITIES:
            raise ValueError(f"unknown {self.render_quality=}; choose one of {RENDER_QUALITIES}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps=}")


class TaskInstance:
    """One robosuite env of a task with its renderer; numpy in, numpy out."""

    def __init__(self, spec: TaskSpec, config: PhysicsEnvConfig):
        import robosuite
        from robosuite.controllers import load_controller_config

        self.spec = spec
        # robosuite draws some model properties (Lift's cube size) from numpy's global RNG when it
        # builds the model: fix them, so every instance (and process) simulates the same world.
        np.random.seed(0)
        self.env = robosuite.make(
            spec.robosuite_env,
            robots="Panda",
            controller_configs=load_controller_config(default_controller="OSC_POSE"),
            has_renderer=False,
            has_offscreen_renderer=False,  # we render with our own fast renderer
            use_camera_obs=False,
            hard_reset=False,  # keep one model: the moved cameras and render settings persist
            control_freq=20,
            horizon=10**9,  # horizons are ours
            ignore_done=True,
            reward_shaping=False,
        )
        self.env.reset()
        self.bodies = object_bodies(self.env, spec)
        sim = self.env.sim
        cameras = {v: spec.cameras[v] for v in config.views}
        self.renderer = None
        if cameras:
            self.renderer = SceneRenderer(
                sim.model._model, sim.data._data, cameras, config.height, config.width, config.render_quality
            )
        self._obs = None

    def reset(self, seed: int) -> None:
        # robosuite 1.4 draws object placements and initial joint noise from numpy's global RNG.
        np.random.seed(seed % 2**32)
        self._obs = self.env.reset()
        # A soft reset (hard_reset=False) keeps the OSC controller's cached end-effector pose and
        # goal and the gripper's rate-limited command from the last episode: clear them, or the
        # same seed gives different motions depending on what ran before.
        for robot in self.env.robots:
            robot.controller.update(force=True)
            robot.controller.reset_goal()
            robot.gripper.current_action = np.zeros(robot.gripper.dof)

    def step(self, action: np.ndarray) -> bool:
        """One env step; returns whether the task is solved."""
        self._obs, _, _, _ = self.env.step(action)
        return bool(self.env._check_success())

    def state(self) -> np.ndarray:
        """Proprioception (S,): end-effector position, axis-angle, gripper finger positions."""
        from robosuite.utils.transform_utils import quat2axisangle

        o = self._obs
        return np.concatenate(
            [o["robot0_eef_pos"], quat2axisangle(o["robot0_eef_quat"]), o["robot0_gripper_qpos"]]
        ).astype(np.float32)

    def object_state(self) -> np.ndarray:
        d = self.env.sim.data
        return slot_poses([np.concatenate([d.body_xpos[b], d.body_xquat[b]]) for b in self.bodies])

    def stage(self) -> int:
        return self.spec.stage(self.env)

    def render(self) -> dict[str, np.ndarray]:
        return self.renderer.render() if self.renderer is not None else {}

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
        self.env.close()


class PhysicsEnv:
    """``num_envs`` physics envs of one task behind the imagined simulator's interface."""

    def __init__(self, config: PhysicsEnvConfig):
        self.config = config
        self.spec = get_task(config.task)
        self.num_envs = config.num_envs
        self.views = tuple(config.views)
        self.max_steps = config.max_steps or self.spec.max_steps
        self.action_dim = ACTION_DIM
        self.envs = [TaskInstance(self.spec, config) for _ in range(self.num_envs)]
        self._steps = np.zeros(self.num_envs, dtype=np.int64)
        self._done = np.ones(self.num_envs, dtype=bool)  # nothing is running before reset
        # env steps at each episode's first success (0: none yet); an episode succeeded where it is > 0
        self._success_step = np.zeros(self.num_envs, dtype=np.int64)
        self._last = [None] * self.num_envs  # latest (images, state, object state) per env
        self._prev = [None] * self.num_envs  # the same one env step before (after a reset: the latest)
        self._next_seed = 0
        self._started = False

    # ---- gymnasium-style API -------------------------------------------------------------
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        mask = np.ones(self.num_envs, dtype=bool)
        if options and options.get("reset_mask") is not None:
            mask = np.asarray(torch.as_tensor(options["reset_mask"]).cpu(), dtype=bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {mask.shape}")
        # Seeds are a counter: reset(seed=s) gives the envs s, s+1, ...; later resets continue it.
        # options={"seeds": [...]} instead names the seed of each reset env (RL groups share one).
        if seed is not None:
            self._next_seed = seed
        chosen = options.get("seeds") if options else None
        if chosen is not None and len(chosen) != mask.sum():
            raise ValueError(f"seeds must give one seed per reset env ({int(mask.sum())}), got {len(chosen)}")
        seeds = {}
        for i, b in enumerate(np.flatnonzero(mask)):
            if chosen is not None:
                seeds[int(b)] = int(chosen[i])
                continue
            seeds[int(b)] = self._next_seed
            self._next_seed += 1
        for b, s in seeds.items():
            self._reset_one(b, s)
        self._started = True
        frames = {v: torch.from_numpy(np.stack([self._last[b][0][v] for b in range(self.num_envs)]))
                  .permute(0, 3, 1, 2)[:, None] for v in self.views}
        info = self._info(frames, torch.ones(self.num_envs, 1, dtype=torch.bool))
        info["seeds"] = seeds
        return self._observation(), info

    def step(self, actions: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        actions = self._check_actions(actions)
        B, H, _ = actions.shape
        h, w = self.config.height, self.config.width
        frames = {v: np.zeros((B, H, h, w, 3), dtype=np.uint8) for v in self.views}
        valid = np.zeros((B, H), dtype=bool)
        states = np.zeros((B, H, keys.STATE_DIM), dtype=np.float32)
        reward = np.zeros(B, dtype=np.float32)
        act = actions.detach().cpu().double().numpy()
        for b, env in enumerate(self.envs):
            for t in range(H):
                if self._done[b]:
                    for v in self.views:  # pad with the frozen last frame
                        frames[v][b, t] = self._last[b][0][v]
                    states[b, t] = self._last[b][1]
                    continue
                self._prev[b] = self._last[b]
                solved = env.step(act[b, t])
                self._steps[b] += 1
                images = env.render()
                self._last[b] = (images, env.state(), env.object_state())
                for v in self.views:
                    frames[v][b, t] = images[v]
                states[b, t] = self._last[b][1]
                valid[b, t] = True
                if solved:
                    if not self._success_step[b]:
                        self._success_step[b] = self._steps[b]
                    reward[b] = 1.0
                if (solved and self.config.terminate_on_success) or self._steps[b] >= self.max_steps:
                    self._done[b] = True
        terminated = torch.from_numpy(self._success & self._done)
        truncated = torch.from_numpy((self._steps >= self.max_steps) & ~self._success)
        frames_t = {v: torch.from_numpy(f).permute(0, 1, 4, 2, 3) for v, f in frames.items()}
        info = self._info(frames_t, torch.from_numpy(valid))
        info["states"] = torch.from_numpy(states)
        obs = self._observation()
        if self.config.autoreset and self._done.any():
            info["final_observation"] = obs
            info["final_info"] = {k: info[k] for k in ("success", "success_prob", "progress", "object_state", "stage", "steps", "success_step")}
            obs, reset_info = self.reset(options={"reset_mask": self._done.copy()})
            # info describes the envs as they are now; the finished episodes are in final_info
            info |= {k: reset_info[k] for k in ("success", "success_prob", "progress", "object_state", "stage", "steps", "success_step", "seeds")}
        return obs, torch.from_numpy(reward), terminated, truncated, info

    @property
    def _success(self) -> np.ndarray:
        """(B,) bool: whether each episode has succeeded (its first success step is set)."""
        return self._success_step > 0

    def task_env(self, b: int = 0):
        """Env b's robosuite env, for a scripted expert planning from the start (the policy's
        privilege, never the simulator's: no imagined outcome reads it)."""
        return self.envs[b].env

    def close(self) -> None:
        for env in self.envs:
            env.close()

    # ---- helpers ---------------------------------------------------------------------------
    def _reset_one(self, b: int, seed: int) -> None:
        env = self.envs[b]
        env.reset(seed)
        self._last[b] = self._prev[b] = (env.render(), env.state(), env.object_state())
        self._steps[b] = 0
        self._done[b] = False
        self._success_step[b] = 0

    def _check_actions(self, actions) -> torch.Tensor:
        actions = torch.as_tensor(actions)
        if actions.ndim != 3 or actions.shape[0] != self.num_envs or actions.shape[2] != self.action_dim:
            raise ValueError(
                f"actions must be an action chunk of shape (num_envs={self.num_envs}, H, A={self.action_dim}), "
                f"got {tuple(actions.shape)}"
            )
        if not actions.is_floating_point():
            raise TypeError(f"actions must be a floating-point tensor, got {actions.dtype}")
        if not torch.isfinite(actions).all():
            bad = torch.nonzero(~torch.isfinite(actions))[0].tolist()
            raise ValueError(f"actions must be finite; got {actions[tuple(bad)].item()} at (env, step, dim) = {tuple(bad)}")
        if not self._started:
            raise RuntimeError("call reset() before step()")
        return actions

    def _observation(self) -> dict:
        obs = self._tensors(self._last)
        obs |= {keys.previous_key(k): v for k, v in self._tensors(self._prev).items()}
        obs[keys.TASK] = [self.spec.instruction] * self.num_envs
        return obs

    def _tensors(self, latest: list[tuple]) -> dict:
        """The observation tensors of per-env (images, state, object state) triples."""
        obs = {}
        for v in self.views:
            imgs = np.stack([latest[b][0][v] for b in range(self.num_envs)])  # (B, h, w, 3)
            obs[keys.image_key(v)] = torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(255.0)
        obs[keys.STATE] = torch.from_numpy(np.stack([latest[b][1] for b in range(self.num_envs)]))
        obs[keys.ENV_STATE] = torch.from_numpy(np.stack([latest[b][2] for b in range(self.num_envs)]))
        return obs

    def _info(self, frames: dict, valid: torch.Tensor) -> dict:
        stage = torch.tensor([e.stage() for e in self.envs], dtype=torch.long)
        success = torch.from_numpy(self._success.copy())
        return {
            "success": success,
            "success_prob": success.float(),
            "progress": stage.float() / self.spec.num_stages,
            "object_state": torch.from_numpy(np.stack([latest[2] for latest in self._last])),  # read at each step
            "stage": stage,
            "steps": torch.from_numpy(self._steps.copy()),
            # the step of the first success (0: none yet), also where episodes go on past it
            "success_step": torch.from_numpy(self._success_step.copy()),
            "frames": frames,
            "frames_valid": valid,
        }
