"""A small language-conditioned flow-matching policy, VLA-shaped, that trains on a CPU.

    images of every view ─ CNN ─ tokens ┐
    observation.state ─ linear ─ token  ├─ transformer ─ velocity of the action chunk
    task string ─ hashed words ─ token  │
    noisy action chunk + flow time ─────┘

Like pi0 at toy scale: an observation prefix (image, state and language tokens) and action tokens
go through one transformer; flow matching trains the velocity v = noise - actions along
x_t = (1 - t) actions + t noise. Sampling integrates from t = 1 to 0 in N steps; the prefix is
encoded once per chunk.

For RL (``sample``/``log_prob``, ``policy.base.RLPolicy``) the last K steps are steps of the SDE
with the flow ODE's marginals (``policy.base.flow_sde_step``); the first N - K stay deterministic.
``select_action_chunk`` integrates the ODE (deterministic) unless ``stochastic`` is set.

Actions and states are normalised with dataset statistics kept in the config, so a saved policy
acts in env units by itself. It is stateless between chunks (one observation, no history).

Dimension legend: B batch, V views, h x w image size, S state dim, A action dim, H chunk length,
P prefix tokens, D width, K stochastic steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from policy.base import ActionSample, flow_sde_step, gaussian_log_prob
from policy.flow.configuration_flow import FlowPolicyConfig
from simulator import keys
from simulator.progress.modeling_progress import task_tokens


def time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of flow times t (B,) in [0, 1] -> (B, dim)."""
    freqs = torch.exp(-math.log(1000.0) * torch.arange(dim // 2, device=t.device) / (dim // 2))
    angles = 1000.0 * t[:, None].float() * freqs[None]  # t scaled like diffusion timesteps
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FlowPolicy(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, views: tuple[str, ...] = ("front", "wrist"), image_size: int = 64, state_dim: int = 8,
                 action_dim: int = 7, chunk_size: int = 8, channels: tuple[int, ...] = (16, 32, 64, 64),
                 norm_num_groups: int = 8, task_buckets: int = 1024, width: int = 128, depth: int = 4, heads: int = 4,
                 num_steps: int = 4, rl_steps: int = 2, noise_level: float = 0.5, t_max: float = 0.9,
                 min_std: float = 0.05, action_mean: list[float] | None = None, action_std: list[float] | None = None,
                 state_mean: list[float] | None = None, state_std: list[float] | None = None, task_suffix: str = "",
                 frozen_early_steps: bool = False):
        """Arguments as in FlowPolicyConfig, plus the dataset's action and state statistics, and
        ``task_suffix``: words appended to every task it reads (an advantage-conditioned policy acts
        with its best bin's words, ``train.rl.advantage_conditioned``), and ``frozen_early_steps``:
        the first N - K denoising steps run a frozen copy of the network (``start_fine_tuning``)."""
        super().__init__()
        cfg = self.spec = FlowPolicyConfig(
            views=tuple(views), image_size=image_size, state_dim=state_dim, action_dim=action_dim,
            chunk_size=chunk_size, channels=tuple(channels), norm_num_groups=norm_num_groups,
            task_buckets=task_buckets, width=width, depth=depth, heads=heads, num_steps=num_steps,
            rl_steps=rl_steps, noise_level=noise_level, t_max=t_max, min_std=min_std)
        for name, value, dim, default in (("action_mean", action_mean, action_dim, 0.0),
                                          ("action_std", action_std, action_dim, 1.0),
                                          ("state_mean", state_mean, state_dim, 0.0),
                                          ("state_std", state_std, state_dim, 1.0)):
            value = torch.full((dim,), default) if value is None else torch.tensor(value, dtype=torch.float32)
            if value.shape != (dim,):
                raise ValueError(f"{name} must have {dim} entries, got {value.shape[0]}")
            self.register_buffer("_" + name, value.clamp_min(1e-3) if name.endswith("std") else value, persistent=False)
        layers, c_in = [], 3
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(cfg.norm_num_groups, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(cfg.norm_num_groups, c), nn.SiLU()]
            c_in = c
        D, V, T = cfg.width, len(cfg.views), cfg.tokens_per_view
        self.encoder = nn.Sequential(*layers, nn.Conv2d(c_in, D, 1))
        self.image_position = nn.Parameter(torch.randn(V * T, D) * 0.02)  # which view, which cell
        self.state_proj = nn.Linear(state_dim, D)
        self.task_embedding = nn.EmbeddingBag(task_buckets, D, mode="mean")
        self.action_in = nn.Linear(action_dim, D)
        self.action_position = nn.Parameter(torch.randn(chunk_size, D) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        layer = nn.TransformerEncoderLayer(D, heads, 4 * D, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.action_out = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, action_dim))
        self.task_suffix = task_suffix
        # The base network for the first N - K (deterministic) denoising steps once RL fine-tunes
        # the last K; saved with the policy so that a fine-tuned policy acts as it was trained.
        self.early = None
        if frozen_early_steps:
            self.early = FlowPolicy(**self._base_kwargs()).requires_grad_(False).eval()
        self.stochastic = False  # select_action_chunk: ODE (False) or the SDE of sample() (True)
        self._env_generators: dict[int, torch.Generator] = {}  # per env, seeded by reset(seeds=...)

    # ---- the network ---------------------------------------------------------------------
    def encode(self, obs: dict) -> Tensor:
        """The observation prefix: (B, P, D) tokens of every view, the state and the task."""
        cfg = self.spec
        images = self._images(obs)  # (B, V, 3, h, w) in [0, 1]
        B, V = images.shape[:2]
        feats = self.encoder(images.flatten(0, 1) * 2 - 1)  # (B V, D, h', w')
        img = feats.flatten(2).transpose(1, 2).reshape(B, V * cfg.tokens_per_view, -1) + self.image_position
        state = obs[keys.STATE].to(images.device).float()
        if state.shape != (B, cfg.state_dim):
            raise ValueError(f"{keys.STATE} must be (B={B}, {cfg.state_dim}), got {tuple(state.shape)}")
        state_tok = self.state_proj((state - self._state_mean) / self._state_std)[:, None]
        task_tok = self._embed_tasks([t + self.task_suffix for t in self._tasks(obs, B)], images.device)[:, None]
        return torch.cat([img, state_tok, task_tok], dim=1)

    def velocity(self, prefix: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Velocity (B, H, A) of the normalised action chunk x (B, H, A) at flow times t (B,)."""
        tokens = self.action_in(x) + self.action_position + self.time_mlp(time_embedding(t, self.spec.width))[:, None]
        out = self.transformer(torch.cat([prefix, tokens], dim=1))
        return self.action_out(out[:, prefix.shape[1]:])

    def forward(self, obs: dict, actions: Tensor, action_mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """The training loss (``loss``), so that a distributed wrapper syncs its gradients."""
        return self.loss(obs, actions, action_mask, generator)

    def loss(self, obs: dict, actions: Tensor, action_mask: Tensor | None = None,
             generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching loss of the chunk ``actions`` (B, H, A) in env units; ``action_mask``
        (B, H) False marks padding past an episode's end, left out of the loss."""
        B, H, A = actions.shape
        if (H, A) != (self.spec.chunk_size, self.spec.action_dim):
            raise ValueError(f"actions must be (B, {self.spec.chunk_size}, {self.spec.action_dim}), got {tuple(actions.shape)}")
        x0 = (actions - self._action_mean) / self._action_std
        where = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=where).to(x0.device)
        # Times skewed towards the noisy end, where the chunk is decided (pi0 samples a Beta likewise).
        t = 1 - torch.rand(B, generator=generator, device=where).to(x0.device).pow(1.5) * 0.999
        x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        err = (self.velocity(self.encode(obs), x_t, t) - (noise - x0)).pow(2).mean(-1)  # (B, H)
        if action_mask is None:
            return err.mean()
        mask = action_mask.float()
        return (err * mask).sum() / mask.sum().clamp_min(1.0)

    # ---- sampling ------------------------------------------------------------------------
    @property
    def times(self) -> Tensor:
        """(N + 1,) flow times from 1 (noise) to 0 (actions)."""
        return torch.linspace(1.0, 0.0, self.spec.num_steps + 1)

    @torch.no_grad()
    def sample(self, obs: dict, generator: torch.Generator | None = None) -> ActionSample:
        """An action chunk (ODE for the first N - K steps, SDE for the last K) and the log-density
        of each stochastic step."""
        cfg, times = self.spec, self.times
        prefix = self.encode(obs)
        B, N, K = prefix.shape[0], cfg.num_steps, cfg.rl_steps
        net, early_prefix = self._early_velocity(obs, prefix)
        x = self._noise((B, cfg.chunk_size, cfg.action_dim), generator)
        for i in range(N - K):
            x = x + (times[i + 1] - times[i]) * net.velocity(early_prefix, x, times[i].expand(B).to(x.device))
        chain, log_probs = [x], []
        for i in range(N - K, N):
            mean, std = self._sde_step(prefix, x, float(times[i]), float(times[i + 1]))
            x = mean + std * self._noise(x.shape, generator)
            chain.append(x)
            log_probs.append(gaussian_log_prob(x, mean, std))
        return ActionSample(actions=self._unnormalize(x), log_probs=torch.stack(log_probs, 1),
                            chain=torch.stack(chain, 1), times=times[N - K:N])

    def log_prob(self, obs: dict, sample: ActionSample) -> Tensor:
        """(B, K) log-densities of the sample's stochastic steps under the current parameters."""
        prefix = self.encode(obs)
        times, out = self.times, []
        N, K = self.spec.num_steps, self.spec.rl_steps
        for k, i in enumerate(range(N - K, N)):
            mean, std = self._sde_step(prefix, sample.chain[:, k], float(times[i]), float(times[i + 1]))
            out.append(gaussian_log_prob(sample.chain[:, k + 1], mean, std))
        return torch.stack(out, 1)

    @torch.no_grad()
    def sample_ode(self, obs: dict, generator: torch.Generator | None = None) -> Tensor:
        """The deterministic chunk (B, H, A) in env units: N Euler steps of the flow ODE."""
        cfg, times = self.spec, self.times
        prefix = self.encode(obs)
        B, N, K = prefix.shape[0], cfg.num_steps, cfg.rl_steps
        net, early_prefix = self._early_velocity(obs, prefix)
        x = self._noise((B, cfg.chunk_size, cfg.action_dim), generator)
        for i in range(N):
            step_net, step_prefix = (net, early_prefix) if i < N - K else (self, prefix)
            x = x + (times[i + 1] - times[i]) * step_net.velocity(step_prefix, x, times[i].expand(B).to(x.device))
        return self._unnormalize(x)

    # ---- the chunk-policy interface (policy.base.ChunkPolicy) -------------------------------
    def reset(self, obs: dict, info: dict, mask: Tensor | None = None, seeds: list[int] | None = None) -> None:
        """Stateless between chunks; ``seeds`` (one per started env, in env order) fix each env's
        sampling noise, so that episode i draws the same noise whatever batch it runs in."""
        if seeds is None:
            return
        envs = torch.nonzero(torch.as_tensor(mask).bool()).flatten().tolist() if mask is not None else range(len(seeds))
        if len(envs) != len(seeds):
            raise ValueError(f"reset got {len(seeds)} seeds for {len(envs)} started envs")
        for b, seed in zip(envs, seeds):
            self._env_generators[b] = torch.Generator().manual_seed(int(seed))

    def select_action_chunk(self, obs: dict) -> Tensor:
        if self.stochastic:
            return self.sample(obs).actions.float().cpu()
        return self.sample_ode(obs).float().cpu()

    def start_fine_tuning(self) -> None:
        """Freezes the network of the first N - K denoising steps at its current weights (DPPO
        fine-tunes only the last K): RL's log-probabilities and KL see only the last K steps, so
        a shared network would let the deterministic early steps drift unseen. Idempotent."""
        if self.early is not None:
            return
        early = FlowPolicy(**self._base_kwargs())
        early.load_state_dict(self.state_dict())
        self.early = early.requires_grad_(False).eval().to(self.device)
        self.register_to_config(frozen_early_steps=True)

    def _base_kwargs(self) -> dict:
        return {k: v for k, v in self.config.items() if not k.startswith("_")} | {"frozen_early_steps": False}

    def _early_velocity(self, obs: dict, prefix: Tensor):
        """(network, its prefix) for the first N - K steps: the frozen copy once fine-tuning started."""
        if self.early is None:
            return self, prefix
        return self.early, self.early.encode(obs)

    def set_task_suffix(self, suffix: str) -> None:
        """Words appended to every task from now on, and saved with the policy."""
        self.task_suffix = suffix
        self.register_to_config(task_suffix=suffix)

    # ---- helpers -------------------------------------------------------------------------
    def _sde_step(self, prefix: Tensor, x: Tensor, t: float, s: float) -> tuple[Tensor, Tensor]:
        cfg = self.spec
        v = self.velocity(prefix, x, torch.full((x.shape[0],), t, device=x.device))
        return flow_sde_step(x, v, t, s, cfg.noise_level, cfg.t_max, cfg.min_std)

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """Standard normal noise: from ``generator``, else from each env's own generator when
        reset seeded one for every row, else from the global RNG."""
        if generator is None and self._env_generators and set(range(shape[0])) <= set(self._env_generators):
            rows = [torch.randn(shape[1:], generator=self._env_generators[b]) for b in range(shape[0])]
            return torch.stack(rows).to(self.device)
        where = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=where).to(self.device)

    def _unnormalize(self, x: Tensor) -> Tensor:
        return x * self._action_std + self._action_mean

    def _images(self, obs: dict) -> Tensor:
        cfg, views = self.spec, []
        for view in cfg.views:
            key = keys.image_key(view)
            if key not in obs:
                raise KeyError(f"the observation has no {key!r}; this policy reads the views {list(cfg.views)}")
            img = obs[key]
            if img.dtype == torch.uint8:
                img = img.float() / 255.0
            if img.ndim != 4 or img.shape[1:] != (3, cfg.image_size, cfg.image_size):
                raise ValueError(f"{key} must be (B, 3, {cfg.image_size}, {cfg.image_size}), got {tuple(img.shape)}")
            views.append(img.to(self.device).float())
        return torch.stack(views, 1)

    @staticmethod
    def _tasks(obs: dict, B: int) -> list[str]:
        task = obs.get(keys.TASK, "")
        task = [task] * B if isinstance(task, str) else list(task)
        if len(task) != B:
            raise ValueError(f"{keys.TASK} must hold one string per env ({B}), got {len(task)}")
        return task

    def _embed_tasks(self, task: list[str], device) -> Tensor:
        tokens = [task_tokens(t, self.spec.task_buckets) for t in task]
        flat = torch.tensor([i for ids in tokens for i in ids], dtype=torch.long)
        lengths = torch.tensor([len(ids) for ids in tokens], dtype=torch.long)
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])
        return self.task_embedding(flat.to(device), offsets.to(device))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> FlowPolicy:
        """diffusers' from_pretrained, after checking that a local folder holds a FlowPolicy."""
        path = Path(pretrained_model_name_or_path)
        config = path / cls.config_name
        if path.is_dir() and not config.is_file():
            hint = f"; load {path / 'model'}" if (path / "model" / cls.config_name).is_file() else ""
            raise FileNotFoundError(f"{path} holds no {cls.config_name}: not a saved {cls.__name__}{hint}")
        if config.is_file() and (found := json.loads(config.read_text()).get("_class_name")) != cls.__name__:
            raise ValueError(f"{path} holds a {found}, not a {cls.__name__} (reverie-train policy saves <output_dir>/model)")
        # safetensors only: diffusers would otherwise fall back to a pickled .bin, which can run code
        return super().from_pretrained(pretrained_model_name_or_path, **{**kwargs, "use_safetensors": True})
