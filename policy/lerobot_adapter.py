"""Lerobot policies as chunk policies of our simulators, and DPPO sampling for lerobot's Diffusion Policy.

``LerobotPolicy`` wraps a lerobot ``PreTrainedPolicy`` (any type) together with its processor
pipelines. In lerobot 0.6 normalisation lives outside the model: ``make_pre_post_processors``
builds a preprocessor (rename, batch, device, ``NormalizerProcessorStep`` with the dataset
stats) and a postprocessor (``UnnormalizerProcessorStep``, back to the CPU), and lerobot saves
both beside the weights. Our observation keys are lerobot's (``simulator.keys``), so an obs
dict from either simulator goes through the preprocessor unchanged; ``select_action_chunk``
returns the policy's ``predict_action_chunk``, unnormalised to env units, H = n_action_steps.

The adapter is a torch module around the lerobot policy, so that RL trains it as it trains our
own policies (``train()``/``eval()``, ``parameters()``, ``state_dict()``, ``to()``, a deep copy as
the KL anchor, ``save_pretrained``). ``loss(obs, actions, action_mask, generator)`` is the
policy's own training loss (lerobot's ``forward``) on imitated chunks: what filtered imitation
trains with. ``num_envs`` may be changed between episodes (RL rolls out and evaluates with
different batches).

``LerobotDiffusionPolicy`` (what ``LerobotPolicy.wrap`` and ``from_pretrained`` give for a
``diffusion`` policy) is also an ``RLPolicy`` (DPPO, Ren et al. 2024): ``sample`` runs the
denoising loop written out below with the policy's own U-Net, global conditioning and
scheduler timesteps. All but the last K steps are deterministic DDIM steps (eta 0); the last
K (``rl_steps``) are Gaussian steps, DDIM with eta 1 (the DDPM posterior when the steps are
consecutive) whose std is floored at ``min_std``. ``log_prob`` re-scores the stored chain under
the current parameters. Sampling and re-scoring run the model in eval mode, so the conditioning
is the same both times (centre crop, never the random one; GroupNorm/BatchNorm running stats),
while gradients still flow.

What it does not do:

* Observation history: the envs give one observation per chunk, so a diffusion policy must
  have ``n_obs_steps == 1``.
* Conditioning on words appended to the task (``advantage_conditioned``): the adapter passes the
  task unchanged and Diffusion Policy reads no text, so that algorithm refuses lerobot policies;
  GRPO and PPO (Diffusion Policy) and filtered imitation (any type) train them.
* Freezing the early denoising steps (``FlowPolicy.start_fine_tuning``): DPPO fine-tunes one
  U-Net whose early, deterministic steps move with the last K.
* sample/log_prob for other policy types. Flow-matching VLAs (SmolVLA, pi0, pi0.5) integrate an
  ODE with no per-step density; ``LerobotPolicy`` for them is a ``ChunkPolicy`` but not an
  ``RLPolicy`` (``isinstance(p, RLPolicy)`` is False, ``supports_log_prob`` is False), and
  calling ``sample``/``log_prob`` raises a TypeError naming the algorithms that fit.
* Tiny SmolVLA / pi0 (lerobot 0.6, checked here): neither can be built without weights or the
  hub. Both need ``transformers`` (lerobot extras ``smolvla`` / ``pi``), which this project does
  not install; their policy classes raise ImportError without it. Beyond that, SmolVLA's
  ``SmolVLMWithExpertModel`` calls ``AutoConfig.from_pretrained(vlm_model_name)`` and
  ``AutoProcessor.from_pretrained(vlm_model_name)`` even with ``load_vlm_weights=False``, and
  its preprocessor loads the tokenizer by that name: the VLM's widths come from the hub repo
  (HuggingFaceTB/SmolVLM2-500M-Video-Instruct) or a local copy of its config and processor
  files; only the layer counts are configurable. pi0 builds its PaliGemma and action expert from
  ``CONFIG_MAPPING`` with no download, but the widths are fixed: ``paligemma_variant`` and
  ``action_expert_variant`` must be "gemma_300m" or "gemma_2b" (``PI0Config.__post_init__``),
  and the vocabulary (257152) and SigLIP vision tower are fixed too, so the smallest pi0 has
  around a billion parameters (estimated from those widths); its preprocessor's tokenizer is
  hard-coded to the gated hub repo google/paligemma-3b-pt-224. A real SmolVLA/pi0 checkpoint loads through ``from_pretrained``
  once transformers and (for SmolVLA) the VLM repo's config and processor are available.

Dimension legend: B batch (envs), H chunk length (n_action_steps), T diffusion horizon (>= H),
A action dim, K stochastic denoising steps, N cameras, C global-conditioning dim.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from policy.base import LIKELIHOOD_ALGORITHMS, ActionSample, gaussian_log_prob, no_log_prob_message
from simulator import keys

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
PROCESSOR_FILES = ("policy_preprocessor.json", "policy_postprocessor.json")
ACTION_IS_PAD = "action_is_pad"  # lerobot's padding mask of a training batch's action chunk


def lerobot_policy_type(path: str | Path) -> str | None:
    """The lerobot policy type saved in the folder ``path`` ("diffusion", "smolvla", ...), or None
    when it holds no lerobot policy config (our FlowPolicy's config names its ``_class_name``)."""
    from policy import policy_folder

    try:
        config = policy_folder(path) / CONFIG_FILE
    except FileNotFoundError:
        return None
    fields = json.loads(config.read_text())
    return fields.get("type") if "_class_name" not in fields else None


class LogProbUnavailableError(TypeError, AttributeError):
    """Raised by ``sample``/``log_prob`` of a policy without log-probabilities. An AttributeError
    too, so ``hasattr(policy, "sample")`` is False, as ``isinstance(policy, RLPolicy)`` is."""


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


def policy_features(views: tuple[str, ...] = ("front", "wrist"), image_size: int = 64, state_dim: int = 8,
                    action_dim: int = 7) -> tuple[dict, dict]:
    """Lerobot (input_features, output_features) for our observation and action keys."""
    from lerobot.configs import FeatureType, PolicyFeature

    inputs = {keys.image_key(v): PolicyFeature(FeatureType.VISUAL, (3, image_size, image_size)) for v in views}
    inputs[keys.STATE] = PolicyFeature(FeatureType.STATE, (state_dim,))
    return inputs, {keys.ACTION: PolicyFeature(FeatureType.ACTION, (action_dim,))}


def cpu_diffusion_config(views: tuple[str, ...] = ("front", "wrist"), image_size: int = 64, state_dim: int = 8,
                         action_dim: int = 7, chunk_size: int = 8, **overrides):
    """A lerobot ``DiffusionConfig`` small enough to train on a CPU, its features named by
    ``simulator.keys``: ResNet18 from scratch with GroupNorm, a (64, 128, 256) U-Net, one
    observation step, a horizon of ``chunk_size`` rounded up to the U-Net's factor of 8, random
    crops of 7/8 of the image in training (centre crops in eval), 10 DDIM inference steps.
    ``overrides`` set any other ``DiffusionConfig`` field."""
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    inputs, outputs = policy_features(views, image_size, state_dim, action_dim)
    crop = image_size * 7 // 8
    fields = {
        "input_features": inputs, "output_features": outputs,
        "n_obs_steps": 1, "horizon": 8 * math.ceil(chunk_size / 8), "n_action_steps": chunk_size,
        "pretrained_backbone_weights": None, "use_group_norm": True, "crop_shape": (crop, crop),
        "spatial_softmax_num_keypoints": 16, "down_dims": (64, 128, 256), "diffusion_step_embed_dim": 64,
        "noise_scheduler_type": "DDIM", "num_inference_steps": 10,
    }
    fields.update(overrides)
    # lerobot's rule: no training sample starts where its horizon would run past the episode's end
    fields.setdefault("drop_n_last_frames", fields["horizon"] - fields["n_action_steps"] - fields["n_obs_steps"] + 1)
    return DiffusionConfig(**fields)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode inside the block (no random crop, no batch statistics), the old mode after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class LerobotPolicy(nn.Module):
    """A lerobot policy with its processors, as a ``ChunkPolicy`` over ``num_envs`` envs and a
    torch module whose one submodule is the lerobot policy.

    Build one with ``LerobotPolicy.wrap(policy, ...)`` or ``LerobotPolicy.from_pretrained(path)``
    (both give a ``LerobotDiffusionPolicy`` for a diffusion policy). The processors default to
    lerobot's own for the policy's type, built from ``dataset_stats``.
    """

    supports_log_prob = False

    def __init__(self, policy, preprocessor=None, postprocessor=None, num_envs: int = 1,
                 dataset_stats: dict | None = None):
        from lerobot.policies.factory import make_pre_post_processors

        super().__init__()
        if preprocessor is None or postprocessor is None:
            preprocessor, postprocessor = make_pre_post_processors(policy.config, dataset_stats=dataset_stats)
        self.policy, self.preprocessor, self.postprocessor = policy, preprocessor, postprocessor
        self.config = policy.config
        self._num_envs = self._checked_num_envs(num_envs)
        self.chunk_size = self.config.n_action_steps

    @staticmethod
    def adapter_class(policy_type: str) -> type[LerobotPolicy]:
        """The adapter for a lerobot policy type: ``LerobotDiffusionPolicy`` for "diffusion"."""
        return LerobotDiffusionPolicy if policy_type == "diffusion" else LerobotPolicy

    @classmethod
    def rl_algorithms(cls) -> tuple[str, ...]:
        """The ``reverie-rl`` algorithms that train this adapter's policies."""
        return (LIKELIHOOD_ALGORITHMS if cls.supports_log_prob else ()) + ("filtered_imitation",)

    @classmethod
    def wrap(cls, policy, preprocessor=None, postprocessor=None, num_envs: int = 1,
             dataset_stats: dict | None = None, **kwargs) -> LerobotPolicy:
        """The adapter for ``policy``'s type: ``LerobotDiffusionPolicy`` (an RLPolicy, taking
        ``rl_steps``, ``min_std``, ``seed``) for "diffusion", else ``LerobotPolicy``."""
        adapter = cls.adapter_class(policy.config.type)
        return adapter(policy, preprocessor, postprocessor, num_envs, dataset_stats, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, num_envs: int = 1, **kwargs) -> LerobotPolicy:
        """Loads any lerobot policy type from a local checkpoint folder as lerobot saves it
        (config.json, model.safetensors, the processor pipelines) through lerobot's factory."""
        from lerobot.configs import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors

        folder = Path(path)
        missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE, *PROCESSOR_FILES) if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder} is not a lerobot policy checkpoint: it lacks {', '.join(missing)} (lerobot's "
                f"save_pretrained and our save_pretrained write {CONFIG_FILE}, {WEIGHTS_FILE} and the processor "
                "files; checkpoints older than lerobot 0.4 need lerobot's migrate_policy_normalization)")
        config = PreTrainedConfig.from_pretrained(folder)
        try:
            policy = get_policy_class(config.type).from_pretrained(folder, config=config)
        except ImportError as e:
            raise ImportError(f"lerobot's {config.type!r} policy in {folder} needs an optional dependency: {e}") from e
        except OSError as e:  # e.g. SmolVLA fetching its VLM's config and processor by name
            raise OSError(f"building lerobot's {config.type!r} policy from {folder} needs files it could not "
                          f"read (see this module's docstring for SmolVLA and pi0): {e}") from e
        preprocessor, postprocessor = make_pre_post_processors(config, pretrained_path=str(folder))
        return cls.wrap(policy, preprocessor, postprocessor, num_envs, **kwargs)

    def save_pretrained(self, path: str | Path) -> None:
        """Writes the policy and both processors with lerobot's own savers, for ``from_pretrained``."""
        self.policy.save_pretrained(path)
        self.preprocessor.save_pretrained(path)
        self.postprocessor.save_pretrained(path)

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    @property
    def num_envs(self) -> int:
        return self._num_envs

    @num_envs.setter
    def num_envs(self, num_envs: int) -> None:
        self._num_envs = self._checked_num_envs(num_envs)

    @staticmethod
    def _checked_num_envs(num_envs: int) -> int:
        if int(num_envs) != num_envs or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs=}")
        return int(num_envs)

    def forward(self, obs: dict, actions: Tensor, action_mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """The training loss (``loss``), so that a distributed wrapper syncs its gradients."""
        return self.loss(obs, actions, action_mask, generator)

    def loss(self, obs: dict, actions: Tensor, action_mask: Tensor | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """The policy's own training loss (lerobot's ``forward``) of the chunks ``actions``
        (n, H, A) in env units taken from ``obs`` (n rows); ``action_mask`` (n, H) False marks
        steps past an episode's end. The chunk fills the policy's action window from the current
        step; steps past it or masked are lerobot's padding: copies of the last valid action, flagged
        in ``action_is_pad``. The policy's own randomness (noise, timesteps, crops) comes from
        ``generator`` when one is given (the global RNG is left as it was), else from the global RNG."""
        n, H, A = actions.shape
        window = list(self.config.action_delta_indices or [])
        if (H, A) != (self.chunk_size, self.config.action_feature.shape[0]) or window[:1] != [0] or len(window) < H:
            raise ValueError(f"actions must be (n, {self.chunk_size}, {self.config.action_feature.shape[0]}) chunks "
                             f"that start the {self.config.type} policy's action window {window}, got "
                             f"{tuple(actions.shape)}")
        pad = torch.ones(n, len(window), dtype=torch.bool, device=actions.device)
        pad[:, :H] = False if action_mask is None else ~action_mask.bool().to(actions.device)
        last_valid = torch.where(~pad, torch.arange(len(window), device=actions.device), 0).cummax(1).values
        chunk = torch.cat([actions, actions[:, -1:].expand(n, len(window) - H, A)], 1)
        chunk = chunk.gather(1, last_valid[..., None].expand(-1, -1, A))  # (n, window, A)
        batch = self._preprocess(obs | {keys.ACTION: chunk, ACTION_IS_PAD: pad}, check_batch=False, training=True)
        if generator is None:
            return self.policy.forward(batch)[0]
        seed = int(torch.randint(2**62, (1,), generator=generator))
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            return self.policy.forward(batch)[0]

    def reset(self, obs: dict, info: dict, mask: Tensor | None = None, seeds: list[int] | None = None) -> None:
        """Clears lerobot's internal queues (the adapter calls the chunk API, which does not use them)."""
        self.policy.reset()

    @torch.no_grad()
    def select_action_chunk(self, obs: dict) -> Tensor:
        """(B, H, A) float32 actions in env units, on the CPU."""
        batch = self._preprocess(obs)
        with _eval_mode(self.policy):
            actions = self.policy.predict_action_chunk(batch)  # (B, >= H, A) policy units
        return self.postprocessor(actions[:, :self.chunk_size]).float()

    def _preprocess(self, obs: dict, check_batch: bool = True, training: bool = False) -> dict:
        """The policy's preprocessor applied to a copy of ``obs``, after checking the keys it reads.
        ``training``: the observations get the time axis of lerobot's training batches (one step)."""
        for key in self.config.input_features:
            if key not in obs:
                raise KeyError(f"the observation lacks {key!r}, which the {self.config.type} policy reads; "
                               f"it has {sorted(obs)}")
        rows = len(obs[keys.STATE]) if keys.STATE in obs else len(next(iter(obs.values())))
        if check_batch and rows != self.num_envs:
            raise ValueError(f"the observation has {rows} rows, the policy drives {self.num_envs} envs")
        obs = dict(obs)
        if training and self.config.observation_delta_indices is not None:
            for key in self.config.input_features:
                obs[key] = obs[key].unsqueeze(1)
        return self.preprocessor(obs)

    def _unsupported(self, name: str) -> LogProbUnavailableError:
        return LogProbUnavailableError(no_log_prob_message(
            f"{type(self).__name__} around lerobot's {self.config.type!r} policy (no {name})", "RL with GRPO or PPO"))

    def __getattr__(self, name: str):
        # Not methods, so that RLPolicy's isinstance check (a static attribute lookup) is False.
        if name in ("sample", "log_prob"):
            raise self._unsupported(name)
        return super().__getattr__(name)  # nn.Module's submodules, parameters and buffers


class LerobotDiffusionPolicy(LerobotPolicy):
    """A lerobot Diffusion Policy as an ``RLPolicy`` (DPPO): ``sample`` draws a chunk whose last
    ``rl_steps`` denoising steps are Gaussian (std floored at ``min_std``), ``log_prob``
    re-scores them. Noise comes from one generator per env, seeded by ``reset``'s ``seeds``
    (default: ``seed``, ``seed + 1``, ... in reset order), unless a generator is given."""

    supports_log_prob = True

    def __init__(self, policy, preprocessor=None, postprocessor=None, num_envs: int = 1,
                 dataset_stats: dict | None = None, rl_steps: int = 2, min_std: float = 0.1, seed: int = 0):
        super().__init__(policy, preprocessor, postprocessor, num_envs, dataset_stats)
        if self.config.n_obs_steps != 1:
            raise ValueError("the envs give one observation per chunk, so the diffusion policy needs "
                             f"n_obs_steps 1, got {self.config.n_obs_steps=}")
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
        with _eval_mode(self.policy):
            batch = self._model_batch(self._preprocess(obs))
            noise = self._randn((self.num_envs, self.config.horizon, self._action_dim), None)
            actions = self.model.generate_actions(batch, noise=noise)  # (B, H, A) policy units
        return self.postprocessor(actions).float()

    @torch.no_grad()
    def sample(self, obs: dict, generator: torch.Generator | None = None) -> ActionSample:
        """A chunk drawn with its last K denoising steps stochastic, and their log-densities."""
        with _eval_mode(self.policy):
            cond = self._condition(self._preprocess(obs, check_batch=generator is None))  # (B, C)
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
        with _eval_mode(self.policy):
            cond = self._condition(self._preprocess(obs, check_batch=False))  # (B, C)
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
        """Our single-step batch in the layout of lerobot's DiffusionModel: a time axis of 1,
        cameras stacked: state (B, 1, S), images (B, 1, N, 3, h, w)."""
        from lerobot.utils.constants import OBS_ENV_STATE, OBS_IMAGES

        out = {keys.STATE: batch[keys.STATE].unsqueeze(1)}
        if self.config.image_features:
            out[OBS_IMAGES] = torch.stack([batch[k] for k in self.config.image_features], dim=1).unsqueeze(1)
        if self.config.env_state_feature:
            out[OBS_ENV_STATE] = batch[OBS_ENV_STATE].unsqueeze(1)
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
