"""``ImaginedEnv``: the frozen world model and progress model behind the physics env's interface.

    env = ImaginedEnv.from_pretrained(world_model_dir, progress_dir, starts, num_envs=8)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(actions)  # actions (B, H, A), raw units

Dimension legend: B envs, H action-chunk length (a multiple of the world model's chunk), A action
dim, S state dim, D object-state dim, V views, L frames kept per env, h x w image size.

- Episodes start from real frames (``simulator.starts.StartFrames``: dataset episode starts or
  keyframes inside episodes, or frames rendered by the physics env, for matched comparisons).
  Frames before the start repeat the first frame, as the training clips pad them.
- ``step`` imagines the chunk's frames and states with the world model (its chunks one after
  the other, the context sliding over its own frames), then scores every new frame with the
  progress model: Φ = progress of the last frame. The actions are first mapped as physics maps
  them (``as_physics_acts``: arm dims clipped to [-1, 1], the gripper's sign), so that no action
  outside the action space moves the imagined robot further than the real one. A world model that
  imagines non-finite frames or states is an error (``FloatingPointError``), never a black frame.
- ``reward`` = gamma·Φ(next) − Φ(now), plus ``success_bonus`` when the episode succeeds.
- ``terminated``: the success probability of a frame of the chunk passed ``success_threshold``;
  the episode ends at that frame (``info["steps"]`` counts to it and ``frames_valid`` is False after
  it), as a physics episode ends at the step of its success, so that imagined and physics success
  times compare step for step.
- ``truncated``: ``max_steps`` env steps reached. (A truncation where the spread of several
  world-model samples passed a limit told the imagined successes that physics fails no better than
  chance, AUROC 0.51, and was removed: docs/research_log.md.)
- The rule of the simulator: an imagined outcome is decided only from what a robot has, its
  (imagined) frames and proprioception, its actions and the task text. The start frame's object
  state (``StartFrames.object_state``, ground truth from the physics engine) is handed to the
  policy in the reset info, for scripted experts that plan from it (the policy's privilege), and
  never enters the reward, the termination or the truncation. (A grasp check that did read it,
  reverted after it carried the only RL gain: docs/research_log.md, 2026-12-01 and 2026-12-02.)
- ``info["outside_data"]`` (B,): whether the episode's imagined proprioception has left the range
  the world model's dataset records, by more than ``OUTSIDE_MARGIN`` of that range in some dimension
  (the arm pushed through the table, where the data never pushes into it). A diagnostic of where
  the model extrapolates; it decides nothing. Absent for statistics saved without min and max.
- ``obs`` and ``info`` have the physics env's keys (``keys.image_key(view)`` (B, 3, h, w) float in
  [0, 1], ``observation.state`` (B, S), ``task``; info ``success``, ``success_prob``, ``progress``,
  ``frames`` {view: (B, H, 3, h, w) uint8}, ``frames_valid`` (B, H), ``states`` (B, H, S),
  ``steps``, ``success_step`` (the step of the first success, 0 before it; it matters where
  episodes go on past success), ``seeds``; reset info also ``object_state`` (B, D), the start frame's object state,
  which scripted experts plan from). Finished envs stay frozen until a partial reset
  (``options={"reset_mask": mask}``).
- ``obs`` also has each image and the state one env step before under ``keys.previous_key(key)``,
  as the physics env's (after a reset: the current one repeated, as lerobot fills its observation
  queues; not the start's real history frames, so that a matched physics start sees the same), for
  policies with ``n_obs_steps == 2``. Only a world model that imagines every env step (frame stride
  1) keeps that frame: with a larger stride the keys are absent. ``observation.environment_state``,
  which the physics obs carries, never is: no ground-truth object state enters an imagined episode.
- Determinism: ``reset(seed=s)`` gives env b start number s + b (later resets continue the
  count; start n is ``starts[n % len(starts)]``) and re-seeds the sampling noise.
  ``options={"start_index": idx}`` instead picks the start of each reset env (one index per
  reset env, in env order): GRPO's groups start several envs from the same frames.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from simulator import keys
from simulator.normalization import Normalizer, stats_path
from simulator.progress import ProgressModel
from simulator.progress.modeling_progress import history_indices
from simulator.starts import StartFrames
from simulator.world_model import STILL_THRESHOLD, WorldModel, WorldModelSampler

OUTSIDE_MARGIN = 0.1  # share of the dataset's state range beyond its min or max that counts as outside the data

NORMALIZATION_FILE = "normalization.json"  # dataset statistics saved beside a world model


@dataclass
class ImaginedEnvConfig:
    num_envs: int = 8  # imagined episodes run together in one batch
    max_steps: int = 120  # episode horizon in env steps (Lift's physics horizon)
    sampling_steps: int = 1  # world-model denoising steps per chunk
    still_threshold: float = STILL_THRESHOLD  # predicted pixels this close to the last frame keep its value (sampler)
    action_guidance: float = 1.0  # classifier-free guidance on the actions (sampler); 1: none
    gamma: float = 0.99  # discount of the progress-potential reward
    success_threshold: float = 0.5  # success probability that ends an episode as solved
    success_bonus: float = 1.0  # reward added when an episode succeeds
    terminate_on_success: bool = True  # end an episode at its success (False: imagine on to max_steps)

    def __post_init__(self):
        if self.num_envs < 1 or self.max_steps < 1 or self.sampling_steps < 1:
            raise ValueError(f"num_envs, max_steps and sampling_steps must be >= 1, got {self}")
        if not 0.0 < self.success_threshold < 1.0:
            raise ValueError(f"success_threshold must be in (0, 1), got {self.success_threshold=}")

    def sampler(self, model: WorldModel) -> WorldModelSampler:
        """The sampler these settings describe: the imagined env's, and every re-generation's."""
        return WorldModelSampler(model, num_steps=self.sampling_steps, still_threshold=self.still_threshold,
                                 action_guidance=self.action_guidance)


class ImaginedEnv:
    """``num_envs`` imagined episodes in one batch, behind the physics env's interface."""

    def __init__(self, world_model: WorldModel, progress: ProgressModel, starts: StartFrames, normalizer: Normalizer,
                 views: tuple[str, ...], config: ImaginedEnvConfig | None = None):
        self.config = cfg = config or ImaginedEnvConfig()
        self.world_model, self.progress_model = world_model.eval(), progress.eval()
        spec = world_model.spec
        self.views, self.starts, self.normalizer = tuple(views), starts, normalizer
        self.num_envs, self.action_dim, self.max_steps = cfg.num_envs, spec.action_dim, cfg.max_steps
        self.frame_stride = spec.horizon // spec.future  # env steps between imagined frames
        self.sampler = cfg.sampler(world_model)
        self._check_models(spec, progress)
        p = progress.spec
        self._progress_hop = p.history_stride // self.frame_stride  # buffer entries between progress frames
        # Frames kept per env: the world model's context and the progress model's history.
        self.length = max(spec.context, (p.history - 1) * self._progress_hop + 1)
        self.device = next(world_model.parameters()).device
        B, V, (h, w) = self.num_envs, len(self.views), starts.frames.shape[-2:]
        self._frames = torch.zeros(B, V, self.length, 3, h, w, dtype=torch.uint8)
        self._first = torch.zeros(B, V, 3, h, w, dtype=torch.uint8)
        self._states = torch.zeros(B, self.length, spec.state_dim)
        self._object_state = torch.zeros(B, starts.object_state.shape[1])
        self._task = [""] * B
        self._steps = torch.zeros(B, dtype=torch.long)
        self._done = torch.ones(B, dtype=torch.bool)
        # env steps at each episode's first success (0: none yet); an episode succeeded where it is > 0
        self._success_step = torch.zeros(B, dtype=torch.long)
        self._outside = torch.zeros(B, dtype=torch.bool)
        self._state_bounds = state_bounds(normalizer)
        self._progress = torch.zeros(B)
        self._success_prob = torch.zeros(B)
        self._next_seed, self._started = 0, False
        self._generator = torch.Generator(device=self.device).manual_seed(0)

    @classmethod
    def from_pretrained(cls, world_model: str | Path, progress: str | Path, starts: StartFrames,
                        views: tuple[str, ...], stats_root: str | Path | None = None, device: str = "cpu",
                        **config) -> ImaginedEnv:
        """Loads both models; the action/state statistics come from ``normalization.json`` beside
        the world model or, for models saved without it, from the dataset at ``stats_root``."""
        wm = WorldModel.from_pretrained(world_model).to(device)
        pm = ProgressModel.from_pretrained(progress).to(device)
        return cls(wm, pm, starts, load_normalizer(world_model, stats_root), views, ImaginedEnvConfig(**config))

    # ---- gymnasium-style API -------------------------------------------------------------
    @torch.no_grad()
    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        mask = torch.ones(self.num_envs, dtype=torch.bool)
        if options and options.get("reset_mask") is not None:
            mask = torch.as_tensor(options["reset_mask"]).cpu().bool()
            if mask.shape != (self.num_envs,):
                raise ValueError(f"reset_mask must have shape ({self.num_envs},), got {tuple(mask.shape)}")
        if seed is not None:
            self._next_seed = seed
            self._generator.manual_seed(seed)
        envs = torch.nonzero(mask).flatten().tolist()
        chosen = options.get("start_index") if options else None
        if chosen is not None:
            chosen = torch.as_tensor(chosen).long().flatten().tolist()
            if len(chosen) != len(envs) or not all(0 <= i < len(self.starts) for i in chosen):
                raise ValueError(f"start_index must give one start in [0, {len(self.starts)}) per reset env "
                                 f"({len(envs)}), got {chosen}")
        seeds = {}
        for j, b in enumerate(envs):
            seeds[b] = self._next_seed
            self._reset_one(b, chosen[j] if chosen is not None else self._next_seed % len(self.starts))
            self._next_seed += 1
        self._started = True
        self._score(torch.tensor(list(seeds), dtype=torch.long), frames=1)
        info = self._info({v: self._frames[:, i, -1:].clone() for i, v in enumerate(self.views)},
                          torch.ones(self.num_envs, 1, dtype=torch.bool), self._states[:, -1:].clone())
        info |= {"seeds": seeds, "object_state": self._object_state.clone()}
        return self._observation(), info

    @torch.no_grad()
    def step(self, actions: Tensor) -> tuple[dict, Tensor, Tensor, Tensor, dict]:
        actions = as_physics_acts(self._check_actions(actions))
        cfg, spec = self.config, self.world_model.spec
        B, H = actions.shape[:2]
        active = ~self._done
        phi_now = self._progress.clone()
        frames, valid, states = [], [], []
        for k in range(H // spec.horizon):
            pred = self._imagine(actions[:, k * spec.horizon:(k + 1) * spec.horizon])
            run = ~self._done
            self._check_imagined(pred, run)
            new, new_states = self._decoded(pred)  # (B, V, F, 3, h, w), (B, F, S)
            self._frames[run] = torch.cat([self._frames[run], new[run]], 2)[:, :, -self.length:]
            self._states[run] = torch.cat([self._states[run], new_states[run]], 1)[:, -self.length:]
            if self._state_bounds is not None:
                lo, hi = self._state_bounds
                self._outside[run] |= ((new_states[run] < lo) | (new_states[run] > hi)).flatten(1).any(1)
            self._steps[run] += spec.horizon
            frames.append(torch.where(run.view(B, 1, 1, 1, 1, 1), new, self._frames[:, :, -1:]))
            states.append(torch.where(run.view(B, 1, 1), new_states, self._states[:, -1:]))
            first = self._score(torch.nonzero(run).flatten(), frames=spec.future)  # (B,) first solved frame, -1 none
            solved = (first >= 0) & run
            at = self._steps - spec.horizon + (first + 1) * self.frame_stride  # the env step of the solved frame
            self._success_step = torch.where(solved & ~self._success, at, self._success_step)
            ends = solved & cfg.terminate_on_success
            # the episode ends at its first solved frame, not at the chunk's end, as physics ends at its step
            self._steps = torch.where(ends, at, self._steps)
            past = torch.arange(spec.future) > first[:, None]  # (B, F) frames after the solved one
            valid.append(run[:, None] & ~(ends[:, None] & past))
            finished = (solved & cfg.terminate_on_success) | (self._steps >= self.max_steps)
            self._done |= finished & run
        terminated = self._success & self._done & active
        truncated = self._done & active & ~self._success
        reward = torch.where(active, cfg.gamma * self._progress - phi_now, torch.zeros(B))
        reward = reward + cfg.success_bonus * terminated.float()
        frames = torch.cat(frames, 2)
        info = self._info({v: frames[:, i] for i, v in enumerate(self.views)}, torch.cat(valid, 1), torch.cat(states, 1))
        return self._observation(), reward, terminated, truncated, info

    @torch.no_grad()
    def peek(self, chunk: Tensor) -> tuple[Tensor, Tensor]:
        """The frames (B, V, F, 3, h, w) uint8 and states (B, F, S) that ``step(chunk)`` would imagine
        for one world-model chunk (B, H0, A), without taking it: the envs, their sampling noise
        included, stay as they were, so a ``step`` after it samples the same noise. Finished envs show
        their last frame and state. For a caller that shows a policy the frames inside a chunk before
        it has the chunk's last actions (``simulator.lerobot_env``: lerobot's observation history)."""
        chunk = as_physics_acts(self._check_actions(chunk))
        if chunk.shape[1] != self.world_model.spec.horizon:
            raise ValueError(f"peek takes one chunk of {self.world_model.spec.horizon} actions, got {chunk.shape[1]}")
        noise = self._generator.get_state()
        try:
            pred = self._imagine(chunk)
        finally:
            self._generator.set_state(noise)
        run = ~self._done
        self._check_imagined(pred, run)
        frames, states = self._decoded(pred)
        B = self.num_envs
        return (torch.where(run.view(B, 1, 1, 1, 1, 1), frames, self._frames[:, :, -1:]),
                torch.where(run.view(B, 1, 1), states, self._states[:, -1:]))

    def close(self) -> None:
        pass

    # ---- helpers ---------------------------------------------------------------------------
    def _imagine(self, chunk: Tensor):
        """One world-model chunk for every env from its last C frames and states."""
        spec = self.world_model.spec
        context = self._frames[:, :, -spec.context:].to(self.device).float() / 127.5 - 1.0
        state = self.normalizer.normalize(keys.STATE, self._states[:, -spec.context:]).to(self.device)
        actions = self.normalizer.normalize(keys.ACTION, chunk).to(self.device)
        memory = self._first.to(self.device).float() / 127.5 - 1.0 if spec.memory else None
        return self.sampler.sample(context, actions, state, self._generator, memory=memory)

    def _decoded(self, pred) -> tuple[Tensor, Tensor]:
        """A prediction's frames as uint8 (B, V, F, 3, h, w) and its states in raw units (B, F, S), on the CPU."""
        frames = ((pred.frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        return frames, self.normalizer.unnormalize(keys.STATE, pred.state.float().cpu())

    def _check_imagined(self, pred, run: Tensor) -> None:
        """A running env's non-finite prediction would become a black frame that the progress model
        scores: refuse it, naming the env and the episode step its chunk starts at."""
        for what, x in {"frames": pred.frames, "states": pred.state}.items():
            bad = ~torch.isfinite(x).flatten(1).all(1).cpu()
            if (bad & run).any():
                b = int(torch.nonzero(bad & run)[0])
                raise FloatingPointError(f"ImaginedEnv: the world model produced non-finite {what} for env {b} at "
                                         f"step {int(self._steps[b])}: the model or its checkpoint is broken")

    def _score(self, envs: Tensor, frames: int) -> Tensor:
        """Scores the last ``frames`` frames of ``envs`` with the progress model; stores the last
        frame's progress and success probability; returns (B,) the index among them of the first
        success, -1 where there is none (and for envs not scored)."""
        solved_at = torch.full((self.num_envs,), -1, dtype=torch.long)
        if len(envs) == 0:
            return solved_at
        p = self.progress_model.spec
        ends = range(self.length - frames, self.length)
        idx = torch.tensor([history_indices(t, p.history, self._progress_hop) for t in ends])  # (frames, T)
        x = self._frames[envs][:, :, idx]  # (n, V, frames, T, 3, h, w)
        x = x.permute(0, 2, 1, 3, 4, 5, 6).flatten(0, 1).to(self.device).float() / 255.0
        first = self._first[envs].repeat_interleave(frames, 0).to(self.device).float() / 255.0
        out = self.progress_model(x, first, [t for b in envs.tolist() for t in [self._task[b]] * frames])
        prob = out.success_prob.view(len(envs), frames).cpu()
        self._progress[envs] = out.progress.view(len(envs), frames)[:, -1].cpu()
        self._success_prob[envs] = prob[:, -1]
        over = prob > self.config.success_threshold  # (n, frames)
        solved_at[envs] = torch.where(over.any(1), over.int().argmax(1), -1)
        return solved_at

    def _reset_one(self, b: int, n: int) -> None:
        s, L = self.starts, self.length
        frames, states = s.frames[n][:, None], s.state[n][None]
        if s.history is not None:  # real frames before the start
            frames = torch.cat([s.history[n], frames], 1)
            states = torch.cat([s.history_state[n], states], 0)
        idx = (torch.arange(L) - L + frames.shape[1]).clamp_min(0)  # too short: repeat the oldest frame
        self._frames[b], self._states[b] = frames[:, idx], states[idx].float()
        self._first[b], self._object_state[b], self._task[b] = s.first_frames[n], s.object_state[n], s.task[n]
        self._steps[b], self._done[b], self._success_step[b], self._outside[b] = 0, False, 0, False

    @property
    def _success(self) -> Tensor:
        """(B,) bool: whether each episode has succeeded (its first success step is set)."""
        return self._success_step > 0

    def _check_actions(self, actions) -> Tensor:
        actions = torch.as_tensor(actions)
        H0 = self.world_model.spec.horizon
        if actions.ndim != 3 or actions.shape[0] != self.num_envs or actions.shape[2] != self.action_dim:
            raise ValueError(f"actions must be an action chunk of shape (num_envs={self.num_envs}, H, "
                             f"A={self.action_dim}), got {tuple(actions.shape)}")
        if actions.shape[1] % H0 or actions.shape[1] == 0:
            raise ValueError(f"an action chunk of {actions.shape[1]} steps does not fit: the world model imagines "
                             f"chunks of {H0} actions, so H must be a positive multiple of {H0}")
        if not actions.is_floating_point():
            raise TypeError(f"actions must be a floating-point tensor, got {actions.dtype}")
        if not torch.isfinite(actions).all():
            bad = tuple(torch.nonzero(~torch.isfinite(actions))[0].tolist())
            raise ValueError(f"actions must be finite, got {actions[bad].item()} at (env, step, dim) = {bad}")
        if not self._started:
            raise RuntimeError("call reset() before step()")
        return actions.float().cpu()

    def _check_models(self, spec, progress: ProgressModel) -> None:
        p = progress.spec
        if spec.views != len(self.views):
            raise ValueError(f"the world model was trained on {spec.views} views, got views {self.views}")
        if tuple(p.views) != self.views:
            raise ValueError(f"the progress model reads views {tuple(p.views)}, the env renders {self.views}")
        if self.starts.frames.shape[1] != len(self.views):
            raise ValueError(f"start frames have {self.starts.frames.shape[1]} views, the env has {self.views}")
        size = spec.image_size
        if tuple(self.starts.frames.shape[-2:]) != (size, size) or p.image_size != size:
            raise ValueError(f"start frames are {tuple(self.starts.frames.shape[-2:])}, the world model imagines "
                             f"{size}x{size} and the progress model reads {p.image_size}x{p.image_size}")
        if p.history_stride % self.frame_stride:
            raise ValueError(f"the progress model's history stride ({p.history_stride} steps) must be a multiple of "
                             f"the world model's frame stride ({self.frame_stride})")

    def _observation(self) -> dict:
        last = torch.full((self.num_envs,), self.length - 1)
        obs = self._tensors(last)
        if self.frame_stride == 1 and self.length > 1:  # the buffer holds the frame one env step before
            previous = torch.where(self._steps > 0, last - 1, last)  # just reset: the current one repeated
            obs |= {keys.previous_key(k): v for k, v in self._tensors(previous).items()}
        obs[keys.TASK] = list(self._task)
        return obs

    def _tensors(self, idx: Tensor) -> dict:
        """Each env's images and state at its buffer position ``idx`` (B,)."""
        b = torch.arange(self.num_envs)
        obs = {keys.image_key(v): self._frames[b, i, idx].float() / 255.0 for i, v in enumerate(self.views)}
        obs[keys.STATE] = self._states[b, idx]  # advanced indexing: a copy
        return obs

    def _info(self, frames: dict, valid: Tensor, states: Tensor) -> dict:
        outside = {} if self._state_bounds is None else {"outside_data": self._outside.clone()}
        return outside | {
            "success": self._success.clone(),
            "success_prob": self._success_prob.clone(),
            "progress": self._progress.clone(),
            "frames": frames,
            "frames_valid": valid,
            "states": states,
            "steps": self._steps.clone(),
            "success_step": self._success_step.clone(),  # the step of the first success (0: none yet)
        }


def state_bounds(normalizer: Normalizer) -> tuple[Tensor, Tensor] | None:
    """(lo, hi) (S,): the dataset's state range widened by ``OUTSIDE_MARGIN`` of it on each side;
    None for statistics without min and max."""
    stats = normalizer.stats.get(keys.STATE, {})
    if "min" not in stats or "max" not in stats:
        return None
    lo, hi = torch.tensor(stats["min"], dtype=torch.float32), torch.tensor(stats["max"], dtype=torch.float32)
    margin = OUTSIDE_MARGIN * (hi - lo)
    return lo - margin, hi + margin


def as_physics_acts(actions: Tensor) -> Tensor:
    """(..., A) raw actions -> the actions as the physics env's robot acts on them. robosuite's OSC
    controller clips the arm's dims to its input range, [-1, 1] in the OSC_POSE config PhysicsEnv
    loads (``Controller.scale_action``), and the Panda gripper moves by a fixed speed in the direction
    of its command's sign (``PandaGripper.format_action``): 5 acts as 1, and 0.3 as 1 for the gripper."""
    return torch.cat([actions[..., :-1].clamp(-1.0, 1.0), actions[..., -1:].sign()], -1)


def load_normalizer(world_model: str | Path, stats_root: str | Path | None = None) -> Normalizer:
    """The action/state statistics the world model was trained with: ``normalization.json``
    beside it or, for models saved without one, the statistics of the dataset at ``stats_root``."""
    candidates = [Path(world_model) / NORMALIZATION_FILE] + ([stats_path(stats_root)] if stats_root else [])
    for path in candidates:
        if path.is_file():
            stats = json.loads(path.read_text())
            return Normalizer(stats.get("features", stats), source=path)
    raise FileNotFoundError(f"no {NORMALIZATION_FILE} beside the world model {world_model}: give the dataset it was "
                            f"trained on (stats_root) to read the statistics cached beside it")
