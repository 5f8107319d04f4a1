"""Lerobot policies as chunk policies of our simulators (DPPO for Diffusion Policy: ``policy.lerobot_diffusion``).

``LerobotPolicy`` wraps a lerobot ``PreTrainedPolicy`` (any type) together with its processor
pipelines. In lerobot 0.6 normalisation lives outside the model: ``make_pre_post_processors``
builds a preprocessor (rename, batch, device, ``NormalizerProcessorStep`` with the dataset
stats) and a postprocessor (``UnnormalizerProcessorStep``, back to the CPU), and lerobot saves
both beside the weights. Our observation keys are lerobot's (``simulator.keys``), so an obs
dict from either simulator goes through the preprocessor unchanged; ``select_action_chunk``
returns the policy's ``predict_action_chunk``, unnormalised to env units, H = n_action_steps.

Observation history: both envs' obs carry the observation one env step before under
``keys.previous_key(key)`` (the current one repeated after a reset, as lerobot's queues start), so
a Diffusion Policy trained with lerobot-train's default ``n_obs_steps`` 2 (frames one env step
apart) is fed its true last two observations, oldest first, from the obs alone: acting, sampling
and re-scoring a stored obs all see the same history. Other policy types need ``n_obs_steps`` 1.

Ground-truth object state: lerobot-train makes ``observation.environment_state`` an input when the
dataset records it (ours do). The physics obs carries it; the imagined env never does, and such a
policy is refused there at ``reset`` or its first chunk, before any sampling, with the fix
(``env_state_refusal``).

The adapter is a torch module around the lerobot policy, so that RL trains it as it trains our
own policies (``train()``/``eval()``, ``parameters()``, ``state_dict()``, ``to()``, a deep copy as
the KL anchor, ``save_pretrained``). ``loss(obs, actions, action_mask, generator)`` is the
policy's own training loss (lerobot's ``forward``) on imitated chunks: what filtered imitation
trains with; with ``n_obs_steps`` 2 on the obs with its step before and the actions from the
action taken there, the window lerobot's dataset gives (``obs_steps``). ``num_envs`` may be
changed between episodes (RL rolls out and evaluates with different batches).

``LerobotPolicy.wrap`` and ``from_pretrained`` give a ``LerobotDiffusionPolicy``
(``policy.lerobot_diffusion``) for a ``diffusion`` policy: an ``RLPolicy`` too (DPPO, Ren et al.
2024). ``policy_features`` and ``cpu_diffusion_config`` build lerobot configs on our keys.

What it does not do:

* Conditioning on words appended to the task (``advantage_conditioned``): the adapter passes the
  task unchanged and Diffusion Policy reads no text, so that algorithm refuses lerobot policies;
  GRPO and PPO (Diffusion Policy) and filtered imitation (any type) train them.
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

Dimension legend: B batch (envs), H chunk length (n_action_steps), A action dim.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from policy.base import LIKELIHOOD_ALGORITHMS, no_log_prob_message
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


def env_state_refusal(config) -> str:
    """Why a lerobot policy that reads the ground-truth object state cannot act in imagination, and
    the two ways to train one that can (lerobot 0.6's command lines)."""
    kept = {k: {"type": f.type.value, "shape": list(f.shape)} for k, f in config.input_features.items()
            if k != keys.ENV_STATE}
    return (f"the {config.type} policy reads {keys.ENV_STATE!r} (ground-truth object poses: lerobot-train "
            "makes it an input when the dataset records it), which the imagined env never gives: no "
            "ground-truth object state enters an imagined episode. It can run in the physics env only. To "
            "act in imagination, train it without that input, either with lerobot-train's flag that sets "
            f"the inputs: --policy.input_features='{json.dumps(kept)}', or from a copy of the dataset "
            "without the feature: lerobot-edit-dataset --repo_id REPO_ID --root DATASET_DIR "
            "--new_repo_id NEW_REPO_ID --new_root NEW_DATASET_DIR --operation.type remove_feature "
            f"--operation.feature_names \"['{keys.ENV_STATE}']\"")


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
    observation step unless ``n_obs_steps=2`` (lerobot-train's default) is given, a horizon that
    holds the observed steps and the chunk (``n_obs_steps - 1 + chunk_size``) rounded up to the
    U-Net's factor of 8, random crops of 7/8 of the image in training (centre crops in eval), 10 DDIM inference
    steps. ``overrides`` set any other ``DiffusionConfig`` field."""
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    inputs, outputs = policy_features(views, image_size, state_dim, action_dim)
    crop = image_size * 7 // 8
    n_obs_steps = overrides.get("n_obs_steps", 1)
    fields = {
        "input_features": inputs, "output_features": outputs,
        "n_obs_steps": n_obs_steps, "horizon": 8 * math.ceil((n_obs_steps - 1 + chunk_size) / 8),
        "n_action_steps": chunk_size,
        "pretrained_backbone_weights": None, "use_group_norm": True, "crop_shape": (crop, crop),
        "spatial_softmax_num_keypoints": 16, "down_dims": (64, 128, 256), "diffusion_step_embed_dim": 64,
        "noise_scheduler_type": "DDIM", "num_inference_steps": 10,
    }
    fields.update(overrides)
    # lerobot's rule: no training sample starts where its horizon would run past the episode's end
    fields.setdefault("drop_n_last_frames", fields["horizon"] - fields["n_action_steps"] - fields["n_obs_steps"] + 1)
    return DiffusionConfig(**fields)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
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
    max_obs_steps = 1  # observation steps this adapter feeds the policy (the diffusion adapter: 2)

    def __init__(self, policy, preprocessor=None, postprocessor=None, num_envs: int = 1,
                 dataset_stats: dict | None = None):
        from lerobot.policies.factory import make_pre_post_processors

        super().__init__()
        if preprocessor is None or postprocessor is None:
            preprocessor, postprocessor = make_pre_post_processors(policy.config, dataset_stats=dataset_stats)
        self.policy, self.preprocessor, self.postprocessor = policy, preprocessor, postprocessor
        self.config = policy.config
        if not 1 <= self.config.n_obs_steps <= self.max_obs_steps:
            raise ValueError(f"{type(self).__name__} feeds lerobot's {self.config.type!r} policy at most "
                             f"{self.max_obs_steps} observation step(s) (the envs give the observation and "
                             "the one an env step before; history is fed to Diffusion Policy only), got "
                             f"{self.config.n_obs_steps=}")
        self._num_envs = self._checked_num_envs(num_envs)
        self.chunk_size = self.config.n_action_steps

    @staticmethod
    def adapter_class(policy_type: str) -> type[LerobotPolicy]:
        """The adapter for a lerobot policy type: ``LerobotDiffusionPolicy`` for "diffusion"."""
        if policy_type != "diffusion":
            return LerobotPolicy
        from policy.lerobot_diffusion import LerobotDiffusionPolicy  # a subclass of this one: imported late

        return LerobotDiffusionPolicy

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

    @property
    def obs_steps(self) -> int:
        """Observation steps ``loss`` reads (lerobot's ``n_obs_steps``): with 2, the obs carries the
        step before under ``keys.previous_key`` and the actions start with the action taken there."""
        return self.config.n_obs_steps

    @property
    def imitated_steps(self) -> int:
        """Action steps from the current one that ``loss`` reads in full: lerobot's ``horizon``
        less the observed steps before, which may run past the executed chunk (horizon 16 for a
        chunk of 8 with n_obs_steps 2), as lerobot's dataset reads on in the episode."""
        return len(self.config.action_delta_indices or []) - (self.obs_steps - 1)

    def loss(self, obs: dict, actions: Tensor, action_mask: Tensor | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """The policy's own training loss (lerobot's ``forward``) of imitated actions in env units.

        ``actions`` (n, W, A) fill the policy's action window from its first observed step, as
        lerobot's dataset does (its ``action_delta_indices`` start at ``1 - n_obs_steps``): W =
        ``obs_steps - 1 + K``, so with n_obs_steps 2 the action taken at the step before (from
        ``obs``' ``previous.<key>`` observation), then K actions from the current step: at least
        the chunk, at most ``imitated_steps`` (the actions after the chunk, where an episode has
        them). ``action_mask`` (n, W) False marks steps outside the episode (before its first
        step, past its end). Those and the window's steps past W are lerobot's padding: each a copy
        of the nearest valid action (lerobot clamps the frame index to the episode), flagged in
        ``action_is_pad``. The policy's own randomness (noise, timesteps, crops) comes from
        ``generator`` when one is given (the global RNG is left as it was), else from the global RNG."""
        chunk, pad = self._action_window(actions, action_mask)
        batch = self._preprocess(obs | {keys.ACTION: chunk, ACTION_IS_PAD: pad}, check_batch=False,
                                 time_axis=self.config.observation_delta_indices is not None)
        if generator is None:
            return self.policy.forward(batch)[0]
        seed = int(torch.randint(2**62, (1,), generator=generator))
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)
            return self.policy.forward(batch)[0]

    def _action_window(self, actions: Tensor, action_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """lerobot's (action (n, L, A), action_is_pad (n, L)) of the window of L steps from
        ``actions`` (n, W, A) and their mask (n, W) (see ``loss``)."""
        n, W, A = actions.shape
        lead, window = self.obs_steps - 1, list(self.config.action_delta_indices or [])
        width, dim = lead + self.chunk_size, self.config.action_feature.shape[0]
        if not width <= W <= len(window) or A != dim or window[:1] != [-lead]:
            first = "the action taken at the step before, then " if lead else ""
            steps = f"{width}" if width == len(window) else f"{width}..{len(window)}"
            raise ValueError(f"actions must be (n, {steps}, {dim}): {first}the chunk and the actions after it, "
                             f"the start of the {self.config.type} policy's action window "
                             f"{window} (n_obs_steps={self.obs_steps}), got {tuple(actions.shape)}")
        L, device = len(window), actions.device
        valid = torch.zeros(n, L, dtype=torch.bool, device=device)
        valid[:, :W] = True if action_mask is None else action_mask.bool().to(device)
        if not valid.any(1).all():
            raise ValueError("every row of action_mask needs a valid (True) step to imitate")
        steps = torch.arange(L, device=device)
        nearest = torch.where(valid, steps, -1).cummax(1).values  # the last valid step at or before each
        first = torch.where(valid, steps, L).min(1, keepdim=True).values
        nearest = torch.where(nearest < 0, first, nearest)  # before the first valid step: the first
        chunk = torch.cat([actions, actions[:, -1:].expand(n, L - W, A)], 1)
        return chunk.gather(1, nearest[..., None].expand(-1, -1, A)), ~valid

    def reset(self, obs: dict, info: dict, mask: Tensor | None = None, seeds: list[int] | None = None) -> None:
        """Checks that the env gives what the policy reads beside ``obs``'s keys (an env that cannot
        feed it is refused before the first chunk) and clears lerobot's internal queues (the adapter
        calls the chunk API, which does not use them)."""
        self._check_inputs(obs, given_only=True)
        self.policy.reset()

    @torch.no_grad()
    def select_action_chunk(self, obs: dict) -> Tensor:
        """(B, H, A) float32 actions in env units, on the CPU."""
        batch = self._preprocess(obs)
        with eval_mode(self.policy):
            actions = self.policy.predict_action_chunk(batch)  # (B, >= H, A) policy units
        return self.postprocessor(actions[:, :self.chunk_size]).float()

    def _preprocess(self, obs: dict, check_batch: bool = True, time_axis: bool = False) -> dict:
        """The policy's preprocessor applied to a copy of ``obs``, after checking the keys it reads.
        ``time_axis``: each input gets lerobot's observation time axis (n, n_obs_steps, ...), oldest
        step first; the history keys and any ground truth the policy does not read are left out."""
        self._check_inputs(obs)
        rows = len(obs[keys.STATE]) if keys.STATE in obs else len(next(iter(obs.values())))
        if check_batch and rows != self.num_envs:
            raise ValueError(f"the observation has {rows} rows, the policy drives {self.num_envs} envs")
        unread = [keys.ENV_STATE] if keys.ENV_STATE not in self.config.input_features else []
        batch = {k: v for k, v in obs.items() if not k.startswith(keys.PREVIOUS_PREFIX) and k not in unread}
        if time_axis:
            for key in self.config.input_features:
                earlier = [obs[keys.previous_key(key)]] if self.config.n_obs_steps == 2 else []
                batch[key] = torch.stack(earlier + [obs[key]], 1)
        return self.preprocessor(batch)

    def _check_inputs(self, obs: dict, given_only: bool = False) -> None:
        """Refuses an observation that lacks a key the policy reads, naming it and where it comes from.
        ``given_only`` (``reset``, which callers may give a partial observation): only the keys an env
        gives beside those in ``obs``, the object state and the step before of each."""
        features = self.config.input_features
        if keys.ENV_STATE in features and keys.ENV_STATE not in obs:
            raise ValueError(env_state_refusal(self.config))
        needed = [k for k in features if k in obs or not given_only]
        history = [keys.previous_key(k) for k in needed] if self.config.n_obs_steps > 1 else []
        missing = [k for k in (history if given_only else [*features, *history]) if k not in obs]
        if missing:
            why = "" if not set(missing) & set(history) else (
                f" ({keys.PREVIOUS_PREFIX}KEY is the observation one env step before, which both envs give; "
                "the imagined env only with a world model that imagines every env step, frame stride 1)")
            raise KeyError(f"the observation lacks {missing}, which the {self.config.type} policy with "
                           f"n_obs_steps={self.config.n_obs_steps} reads{why}; it has {sorted(obs)}")

    def _unsupported(self, name: str) -> LogProbUnavailableError:
        return LogProbUnavailableError(no_log_prob_message(
            f"{type(self).__name__} around lerobot's {self.config.type!r} policy (no {name})", "RL with GRPO or PPO"))

    def __getattr__(self, name: str):
        # Not methods, so that RLPolicy's isinstance check (a static attribute lookup) is False.
        if name in ("sample", "log_prob"):
            raise self._unsupported(name)
        return super().__getattr__(name)  # nn.Module's submodules, parameters and buffers
