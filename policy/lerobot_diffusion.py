"""DPPO sampling for lerobot's Diffusion Policy: ``LerobotDiffusionPolicy``, an ``RLPolicy``.

``LerobotDiffusionPolicy`` (what ``LerobotPolicy.wrap`` and ``from_pretrained`` give for a
``diffusion`` policy, ``policy.lerobot_adapter``) is also an ``RLPolicy`` (DPPO, Ren et al. 2024):
``sample`` runs the denoising loop written out below with the policy's own U-Net, global
conditioning and scheduler timesteps. All but the last K steps are deterministic DDIM steps
(eta 0); the last K (``rl_steps``) are Gaussian steps, DDIM with eta 1 (the DDPM posterior when
the steps are consecutive) whose std is floored at ``min_std`` (``ddim_step_gaussian``).
``log_prob`` re-scores the stored chain under the current parameters. Sampling and re-scoring run
the model in eval mode, so the conditioning is the same both times (centre crop, never the random
one; GroupNorm/BatchNorm running stats), while gradients still flow.

Observation history: with ``n_obs_steps`` 2 (lerobot-train's default) the conditioning is the
obs's step before (``keys.previous_key``) and current step, as lerobot stacks its queues; the
chunk executed starts at the current step, index ``n_obs_steps - 1`` of the denoised horizon, as
lerobot's. ``sample`` and ``log_prob`` read the history from the obs they are given, so an RL
update re-scores a sample under the history it was acted on, when the rollout stores that obs.

What it does not do:

* More than two observation steps: the envs give the current step and the one before.
* Freezing the early denoising steps (``FlowPolicy.start_fine_tuning``): DPPO fine-tunes one
  U-Net whose early, deterministic steps move with the last K.

Dimension legend: B batch (envs), H chunk length (n_action_steps), T diffusion horizon (>= H),
A action dim, K stochastic denoising steps, N cameras, C global-conditioning dim.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from policy.base import ActionSample, gaussian_log_prob
from policy.lerobot_adapter import LerobotPolicy, eval_mode
from simulator import keys


def ddim_step_gaussian(scheduler, sample: Tensor, model_output: Tensor, t: int, prev_t: int, eta: float,
                       min_std: float = 0.0) -> tuple[Tensor, Tensor]:
    """Mean and std of one DDIM step from timestep ``t`` to ``prev_t`` < t (< 0: to the clean
    sample), as diffusers' ``DDIMScheduler.step(..., eta)`` computes it: the step's sample is
    ``mean + std * z``. Works for "epsilon" and "sample" prediction and clips the predicted clean
    sample as the scheduler is configured to. The mean uses the unfloored std (as DPPO does);
    the returned std is floored at ``min_std``. Shapes: sample, model_output (B, T, A)."""
    config = scheduler.config
    if config.get("thresholding", False):
        raise NotImplementedError("ddim_step_gaussian does not implement dynamic thresholding")
    alpha_t = float(scheduler.alphas_cumprod[int(t)])
    alpha_prev = float(scheduler.alphas_cumprod[int(prev_t)]) if prev_t >= 0 else float(
        getattr(scheduler, "final_alpha_cumprod", 1.0))
    if config.prediction_type == "epsilon":
        x0 = (sample - math.sqrt(1 - alpha_t) * model_output) / math.sqrt(alpha_t)
        eps = model_output
    elif config.prediction_type == "sample":
        x0 = model_output
        eps = (sample - math.sqrt(alpha_t) * x0) / math.sqrt(1 - alpha_t)
    else:
        raise ValueError(f"prediction_type must be 'epsilon' or 'sample', got {config.prediction_type=}")
    if config.clip_sample:
        x0 = x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    sigma = eta * math.sqrt(variance)
    mean = math.sqrt(alpha_prev) * x0 + math.sqrt(max(1 - alpha_prev - sigma ** 2, 0.0)) * eps
    return mean, torch.full_like(mean, max(sigma, min_std))


class LerobotDiffusionPolicy(LerobotPolicy):
    """A lerobot Diffusion Policy as an ``RLPolicy`` (DPPO): ``sample`` draws a chunk whose last
    ``rl_steps`` denoising steps are Gaussian (std floored at ``min_std``), ``log_prob``
    re-scores them. Noise comes from one generator per env, seeded by ``reset``'s ``seeds``
    (default: ``seed``, ``seed + 1``, ... in reset order), unless a generator is given."""

    supports_log_prob = True
    max_obs_steps = 2

    def __init__(self, policy, preprocessor=None, postprocessor=None, num_envs: int = 1,
                 dataset_stats: dict | None = None, rl_steps: int = 2, min_std: float = 0.1, seed: int = 0):
        super().__init__(policy, preprocessor, postprocessor, num_envs, dataset_stats)
        if not 1 <= rl_steps <= self.model.num_inference_steps:
            raise ValueError(f"rl_steps must be in [1, {self.model.num_inference_steps}] (the inference steps), "
                             f"got {rl_steps=}")
        if min_std <= 0:
            raise ValueError(f"min_std must be > 0 to keep the last step's log-density finite, got {min_std=}")
        self.rl_steps, self.min_std = rl_steps, min_std
        self._next_seed = seed
        self.generators = [self._generator(s) for s in self._take_seeds(self.num_envs)]

    @property
    def model(self):
        """lerobot's DiffusionModel: encoders, unet, noise_scheduler (a property: not a second submodule)."""
        return self.policy.diffusion

    @LerobotPolicy.num_envs.setter
    def num_envs(self, num_envs: int) -> None:
        """Keeps the generators of the envs that stay; new envs get the next default seeds."""
        self._num_envs = self._checked_num_envs(num_envs)
        kept = self.generators[:self._num_envs]
        self.generators = kept + [self._generator(s) for s in self._take_seeds(self._num_envs - len(kept))]

    def reset(self, obs: dict, info: dict, mask: Tensor | None = None, seeds: list[int] | None = None) -> None:
        """Reseeds the noise of the envs in ``mask`` (default all) with ``seeds``, one per env."""
        super().reset(obs, info, mask, seeds)
        started = range(self.num_envs) if mask is None else torch.as_tensor(mask).cpu().nonzero().flatten().tolist()
        seeds = self._take_seeds(len(started)) if seeds is None else list(seeds)
        if len(seeds) != len(started):
            raise ValueError(f"got {len(seeds)} seeds for {len(started)} envs to reset")
        for b, s in zip(started, seeds):
            self.generators[b] = self._generator(int(s))

    @torch.no_grad()
    def select_action_chunk(self, obs: dict) -> Tensor:
        """(B, H, A) float32 env units: lerobot's own deterministic sampler from per-env noise."""
        with eval_mode(self.policy):
            batch = self._model_batch(self._preprocess(obs, time_axis=True))
            noise = self._randn((self.num_envs, self.config.horizon, self._action_dim), None)
            actions = self.model.generate_actions(batch, noise=noise)  # (B, H, A) policy units
        return self.postprocessor(actions).float()

    @torch.no_grad()
    def sample(self, obs: dict, generator: torch.Generator | None = None) -> ActionSample:
        """A chunk drawn with its last K denoising steps stochastic, and their log-densities."""
        with eval_mode(self.policy):
            batch = self._preprocess(obs, check_batch=generator is None, time_axis=True)
            cond = self._condition(batch)  # (B, C)
            timesteps = self._timesteps()
            x = self._randn((len(cond), self.config.horizon, self._action_dim), generator)  # (B, T, A)
            chain, log_probs = [], []
            for i, (t, prev_t) in enumerate(zip(timesteps, timesteps[1:] + [-1])):
                stochastic = i >= len(timesteps) - self.rl_steps
                mean, std = self._step(x, t, prev_t, cond, stochastic)
                if not stochastic:
                    x = mean
                    continue
                x_next = mean + std * self._randn(x.shape, generator)
                chain.append(x)
                log_probs.append(gaussian_log_prob(x_next, mean, std))
                x = x_next
        chain = torch.stack(chain + [x], dim=1)  # (B, K + 1, T, A)
        start = self.config.n_obs_steps - 1
        actions = self.postprocessor(x[:, start:start + self.chunk_size]).float()  # (B, H, A) env units
        times = torch.tensor(timesteps[-self.rl_steps:], device=x.device)
        return ActionSample(actions, torch.stack(log_probs, dim=1), chain, times)

    def log_prob(self, obs: dict, sample: ActionSample) -> Tensor:
        """(B, K) log-densities of the sample's stochastic steps under the current parameters,
        differentiable; the conditioning is recomputed from ``obs`` in eval mode, as at sampling."""
        times = [int(t) for t in sample.times]
        with eval_mode(self.policy):
            cond = self._condition(self._preprocess(obs, check_batch=False, time_axis=True))  # (B, C)
            log_probs = []
            for k, (t, prev_t) in enumerate(zip(times, times[1:] + [-1])):
                mean, std = self._step(sample.chain[:, k], t, prev_t, cond, stochastic=True)
                log_probs.append(gaussian_log_prob(sample.chain[:, k + 1], mean, std))
        return torch.stack(log_probs, dim=1)

    def _step(self, x: Tensor, t: int, prev_t: int, cond: Tensor, stochastic: bool) -> tuple[Tensor, Tensor]:
        """Mean and std of one denoising step of x (B, T, A) at timestep t given cond (B, C)."""
        timestep = torch.full((len(x),), t, dtype=torch.long, device=x.device)
        model_output = self.model.unet(x, timestep, global_cond=cond)
        eta, min_std = (1.0, self.min_std) if stochastic else (0.0, 0.0)
        return ddim_step_gaussian(self.model.noise_scheduler, x, model_output, t, prev_t, eta, min_std)

    def _timesteps(self) -> list[int]:
        self.model.noise_scheduler.set_timesteps(self.model.num_inference_steps)
        return [int(t) for t in self.model.noise_scheduler.timesteps]

    def _model_batch(self, batch: dict) -> dict:
        """Our batch with its observation time axis (n_obs_steps, O) in the layout of lerobot's
        DiffusionModel, cameras stacked: state (B, O, S), images (B, O, N, 3, h, w), env state (B, O, D)."""
        from lerobot.utils.constants import OBS_ENV_STATE, OBS_IMAGES

        out = {keys.STATE: batch[keys.STATE]}
        if self.config.image_features:
            out[OBS_IMAGES] = torch.stack([batch[k] for k in self.config.image_features], dim=2)
        if self.config.env_state_feature:
            out[OBS_ENV_STATE] = batch[OBS_ENV_STATE]
        return out

    def _condition(self, batch: dict) -> Tensor:
        """(B, C) global conditioning: lerobot's own image encoders and state concatenation."""
        return self.model._prepare_global_conditioning(self._model_batch(batch))

    @property
    def _action_dim(self) -> int:
        return self.config.action_feature.shape[0]

    def _randn(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """Standard normal noise from ``generator``, or row b from env b's generator."""
        device = next(self.policy.parameters()).device
        if generator is not None:
            return torch.randn(shape, generator=generator, device=device)
        if shape[0] != self.num_envs:
            raise ValueError(f"per-env noise needs {self.num_envs} rows, got {shape[0]}: pass a generator")
        return torch.stack([torch.randn(shape[1:], generator=g, device=device) for g in self.generators])

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(next(self.policy.parameters()).device).manual_seed(seed)

    def _take_seeds(self, n: int) -> list[int]:
        seeds = list(range(self._next_seed, self._next_seed + n))
        self._next_seed += n
        return seeds
