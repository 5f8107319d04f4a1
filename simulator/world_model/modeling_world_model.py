"""The action-conditioned video world model: a pure function of (noisy future, noise level,
context frames, action chunk, state) that predicts the clean future frames of every view.

Dimension legend: B batch, V views, C context frames, F future frames, H action horizon,
A action dim, S state dim, h x w image size; c x h' x w' one frame in the model's sample space
(3 x h x w for the U-Net; c latent channels x h/d x w/d for the latent backbone). Frames are in
[-1, 1]; actions and states are normalised (simulator.normalization.Normalizer).

Backbone ``unet``: a diffusers ``UNet2DModel`` over all views' frames stacked on channels
(V*C context + V*F noisy future frames in, V*F frames out). The action chunk, the context state
and the context-noise level are embedded by an MLP and added to the noise-level embedding, which
modulates every ResNet normalisation (adaptive group norm, ``scale_shift``): the actions reach
every layer. The output is a change from the last context frame, and the last layer starts at
zero, so an untrained model predicts copy-last-frame and learning starts from that baseline.

Backbone ``latent_transformer`` (GPU scale): the frames of every view are encoded by a frozen
diffusers ``AutoencoderKL`` (a submodule, saved and loaded with the model), and a spatio-temporal
transformer (``transformer.py``) denoises the future latents, conditioned per frame on the noise
level and the actions that lead to it. Its output too is a zero-initialised change from the last
context latent. The diffusion runs in latent space: ``encode``, ``decode`` and ``sample_shape``
say what that space is, and the objective and sampler go through them.

Both backbones share the state head: a small MLP that predicts the future proprioceptive states
from the context state and the actions. With ``wrist_warp`` the U-Net also sees the wrist view's
last context frame warped to each future state the head predicts (``wrist_warp.py``).
With ``front_map`` it sees blobs where the gripper and its fingertips project in the front
camera, for the last context state and each predicted one (``pose_map.py``).
"""

import logging
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import Tensor, nn

from simulator.world_model import autoencoder as ae
from simulator.world_model.configuration_world_model import WorldModelConfig
from simulator.world_model.pose_map import FixedCamera, pose_maps
from simulator.world_model.transformer import SpatioTemporalTransformer
from simulator.world_model.wrist_warp import WristCamera, warp

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    frames: Tensor  # (B, V, F, 3, h, w) in [-1, 1] (the model's sample space: latents for a latent backbone)
    state: Tensor  # (B, F, S) normalised


def _sinusoid(x: Tensor, dim: int) -> Tensor:
    """(B,) values in [0, 1] -> (B, dim) sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-torch.arange(half, device=x.device, dtype=torch.float32) * (9.0 / half))
    angles = 1000.0 * x.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _architecture(vae: AutoencoderKL) -> dict:
    """The autoencoder's config (architecture and latent scale), as its own config.json holds it."""
    return {k: v for k, v in vae.config.items() if not k.startswith("_")}


class WorldModel(ModelMixin, ConfigMixin):
    config_name = "config.json"
    _supports_gradient_checkpointing = True  # enable_gradient_checkpointing(): trade compute for memory on GPUs

    @register_to_config
    def __init__(self, backbone: str = "unet", views: int = 2, image_size: int = 64, context: int = 4,
                 future: int = 8, horizon: int = 8, action_dim: int = 7, state_dim: int = 8,
                 block_out_channels: tuple[int, ...] = (32, 64, 128, 128), layers_per_block: int = 1,
                 norm_num_groups: int = 32, cond_dim: int = 256, autoencoder: str | None = None,
                 latent_channels: int = 4, latent_downsample: int = 4, autoencoder_width: int = 64,
                 patch_size: int = 2, depth: int = 12, heads: int = 8, width: int = 512, scale_noisy_input: bool = False,
                 memory: bool = False, wrist_warp: dict | None = None, front_map: dict | None = None,
                 state_mean: list[float] | None = None, state_std: list[float] | None = None,
                 autoencoder_config: dict | None = None):
        """Arguments as in WorldModelConfig, and ``autoencoder_config``: the architecture of the
        latent backbone's autoencoder, which the model records in its own config.json when built,
        so that ``from_pretrained`` rebuilds it without the folder it was first loaded from."""
        super().__init__()
        cfg = WorldModelConfig(
            backbone=backbone, views=views, image_size=image_size, context=context, future=future, horizon=horizon,
            action_dim=action_dim, state_dim=state_dim, block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block, norm_num_groups=norm_num_groups, cond_dim=cond_dim,
            autoencoder=autoencoder, latent_channels=latent_channels, latent_downsample=latent_downsample,
            autoencoder_width=autoencoder_width, patch_size=patch_size, depth=depth, heads=heads, width=width,
            scale_noisy_input=scale_noisy_input, memory=memory, wrist_warp=wrist_warp,
            front_map=front_map, state_mean=state_mean, state_std=state_std)
        self.spec = cfg
        if cfg.wrist_warp is not None or cfg.front_map is not None:  # the pose inputs' constants, parsed once
            self._state_mean, self._state_std = torch.tensor(cfg.state_mean), torch.tensor(cfg.state_std)
            self.wrist_camera = WristCamera.from_dict(cfg.wrist_warp["camera"]) if cfg.wrist_warp else None
            self.front_camera = FixedCamera.from_dict(cfg.front_map["camera"]) if cfg.front_map else None
        if cfg.backbone == "unet":
            self._build_unet(cfg)
        else:
            self._build_latent_transformer(cfg, autoencoder_config)
        self.null_actions = nn.Parameter(torch.zeros(cfg.horizon, cfg.action_dim))  # for action dropout
        state_in = cfg.context * cfg.state_dim + cfg.horizon * cfg.action_dim
        self.state_head = nn.Sequential(nn.Linear(state_in, cfg.cond_dim), nn.SiLU(), nn.Linear(cfg.cond_dim, cfg.cond_dim),
                                        nn.SiLU(), nn.Linear(cfg.cond_dim, cfg.future * cfg.state_dim))
        nn.init.zeros_(self.state_head[-1].weight)  # start as "the state does not change"
        nn.init.zeros_(self.state_head[-1].bias)

    def _build_unet(self, cfg: WorldModelConfig) -> None:
        from diffusers import UNet2DModel

        levels = len(cfg.block_out_channels)
        time_dim = cfg.block_out_channels[0] * 4
        self.unet = UNet2DModel(
            sample_size=cfg.image_size,
            in_channels=3 * cfg.views * (cfg.context + cfg.future + cfg.memory) + 3 * cfg.future * bool(cfg.wrist_warp)
            + 2 * (cfg.future + 1) * bool(cfg.front_map),
            out_channels=3 * cfg.views * cfg.future,
            block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block,
            down_block_types=("DownBlock2D",) * levels,
            up_block_types=("UpBlock2D",) * levels,
            norm_num_groups=cfg.norm_num_groups,
            resnet_time_scale_shift="scale_shift",
            class_embed_type="identity",
            add_attention=False,
        )
        nn.init.zeros_(self.unet.conv_out.weight)  # start as copy-last-frame
        nn.init.zeros_(self.unet.conv_out.bias)
        cond_in = cfg.horizon * cfg.action_dim + cfg.context * cfg.state_dim + cfg.cond_dim
        self.cond = nn.Sequential(nn.Linear(cond_in, cfg.cond_dim), nn.SiLU(), nn.Linear(cfg.cond_dim, time_dim))

    def _build_latent_transformer(self, cfg: WorldModelConfig, autoencoder_config: dict | None) -> None:
        if autoencoder_config is not None:  # a saved model: the weights come from its own file
            vae = AutoencoderKL.from_config(autoencoder_config)
        elif cfg.autoencoder is not None:
            vae = ae.load_autoencoder(cfg.autoencoder)
        else:
            log.warning("latent_transformer with a fresh, untrained autoencoder: fine for tests, useless for "
                        "training; train one (world_model.autoencoder.train_autoencoder) and pass its folder as autoencoder=")
            vae = ae.build_autoencoder(cfg.latent_channels, cfg.latent_downsample, cfg.autoencoder_width,
                                       norm_num_groups=cfg.norm_num_groups)
        found = (vae.config.in_channels, vae.config.latent_channels, ae.downsample_of(vae))
        if found != (3, cfg.latent_channels, cfg.latent_downsample):
            raise ValueError(f"the autoencoder ({cfg.autoencoder or 'from the config'}) has in_channels={found[0]}, "
                             f"latent_channels={found[1]}, latent_downsample={found[2]}; the world model needs "
                             f"in_channels=3 and is configured with {cfg.latent_channels=} {cfg.latent_downsample=}")
        self.vae = vae.requires_grad_(False).eval()  # frozen: the optimiser and DDP skip it (not `self.autoencoder`: a config key)
        self.register_to_config(autoencoder_config=_architecture(vae))
        self.transformer = SpatioTemporalTransformer(
            views=cfg.views, context=cfg.context, future=cfg.future, horizon=cfg.horizon, action_dim=cfg.action_dim,
            state_dim=cfg.state_dim, latent_channels=cfg.latent_channels,
            latent_size=cfg.image_size // cfg.latent_downsample, patch_size=cfg.patch_size, width=cfg.width,
            depth=cfg.depth, heads=cfg.heads, memory=cfg.memory)

    def save_pretrained(self, *args, **kwargs) -> None:
        """diffusers' save_pretrained, after recording the autoencoder's current config (its latent
        scale may have been refit since the model was built: ``autoencoder.fit_latent_scale``)."""
        if self._latent:
            self.register_to_config(autoencoder_config=_architecture(self.vae))
        super().save_pretrained(*args, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "WorldModel":
        """diffusers' from_pretrained, from safetensors only: diffusers would otherwise fall back to a
        pickled ``.bin``, and unpickling a file can run code."""
        return super().from_pretrained(pretrained_model_name_or_path, **{**kwargs, "use_safetensors": True})

    @property
    def _latent(self) -> bool:
        return self.spec.backbone == "latent_transformer"

    def forward(self, noisy: Tensor, t: Tensor, context: Tensor, actions: Tensor, state: Tensor,
                context_noise: Tensor | None = None, drop_actions: Tensor | None = None,
                memory: Tensor | None = None, pose: Tensor | None = None) -> Prediction:
        """Predicts the clean future frames (B, V, F, c, h', w') from noisy ones at noise level t (B,),
        and the future states (B, F, S) (one call, so that DDP sees every parameter used).

        noisy and context (B, V, C, c, h', w') are in the model's sample space (``encode``: pixels
        for the U-Net, latents for the latent backbone); actions (B, H, A); state (B, C, S);
        context_noise (B,): the noise level added to the context (default 0); drop_actions (B,)
        bool: replace the actions by a learned null chunk (classifier-free-style dropout); memory
        (B, V, c, h', w'): the episode's first real frames, for a model with ``memory`` (None otherwise);
        pose: ``pose_inputs(context, actions, state)``, when the caller computed them once for several
        noise levels (None: computed here).
        """
        self._check(noisy=noisy, context=context, actions=actions, state=state)
        self._check_memory(memory, noisy.shape[0])
        cfg = self.spec
        B = noisy.shape[0]
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
        future_state = self._future_state(state, actions)  # the real actions: dropout is for the frames' guidance
        if drop_actions is not None:
            actions = torch.where(drop_actions[:, None, None], self.null_actions.expand_as(actions), actions)
        if context_noise is None:
            context_noise = torch.zeros(B, device=noisy.device)
        if cfg.scale_noisy_input:
            noisy = noisy * (1.0 - t).view(B, 1, 1, 1, 1, 1).to(noisy.dtype)
        if self._latent:
            delta = self.transformer(context, noisy, t, context_noise, actions, state, memory)
        else:
            cond = self.cond(torch.cat([actions.flatten(1), state.flatten(1), _sinusoid(context_noise, cfg.cond_dim)], -1))
            h = w = cfg.image_size
            seen = [context, noisy] if memory is None else [memory, context, noisy]
            if cfg.wrist_warp or cfg.front_map:  # last in the input channels: a model trained without them grows zero weights
                seen.append(pose if pose is not None else self._pose_inputs(context, state, future_state.detach()))
            x = torch.cat([part.reshape(B, -1, h, w) for part in seen], dim=1)
            delta = self.unet(x, t * 1000.0, class_labels=cond).sample.reshape(noisy.shape)
        frames = context[:, :, -1:].expand_as(noisy) + delta
        return Prediction(frames=frames, state=future_state)

    def pose_inputs(self, context: Tensor, actions: Tensor, state: Tensor) -> Tensor | None:
        """The U-Net's pose input channels (B, P, h, w) for a model with ``wrist_warp`` or ``front_map``
        (None without): they depend on the context, the actions and the state, not on the noise, so a
        sampler computes them once per chunk however many steps it takes."""
        if not (self.spec.wrist_warp or self.spec.front_map):
            return None
        return self._pose_inputs(context, state, self._future_state(state, actions))

    def _pose_inputs(self, context: Tensor, state: Tensor, future_state: Tensor) -> Tensor:
        cfg, B = self.spec, context.shape[0]
        parts = []
        if cfg.wrist_warp:
            parts.append(self.warped_wrist(context, state, future_state))
        if cfg.front_map:  # after the warp's: grown channels go last
            parts.append(self.front_maps(torch.cat([state[:, -1:], future_state], 1)))
        return torch.cat([p.reshape(B, -1, cfg.image_size, cfg.image_size) for p in parts], 1)

    def warped_wrist(self, context: Tensor, state: Tensor, future_state: Tensor) -> Tensor:
        """The wrist view's last context frame (B, 3, h, w) warped from the last context state's pose to
        each of ``future_state``'s (B, F, S, normalised): (B, F, 3, h, w)."""
        view = self.spec.wrist_warp["view"]
        return warp(context[:, view, -1], self._unnormalise(state[:, -1])[:, :6],
                    self._unnormalise(future_state)[..., :6], self.wrist_camera)

    def front_maps(self, states: Tensor) -> Tensor:
        """Normalised states (B, N, S) -> the gripper's blobs in the front camera (B, N, 2, h, w)."""
        return pose_maps(self._unnormalise(states), self.front_camera, self.spec.image_size)

    def _unnormalise(self, state: Tensor) -> Tensor:
        return state * self._state_std.to(state) + self._state_mean.to(state)

    # The sample space the diffusion runs in: pixels for the U-Net, scaled autoencoder latents
    # for the latent backbone. The objective and the sampler go through these three.
    def encode(self, frames: Tensor) -> Tensor:
        """(B, V, N, 3, h, w) frames in [-1, 1] -> the model's sample space (B, V, N, c, h', w')."""
        if not self._latent:
            return frames
        self._check_frames(frames, "frames to encode", (3, self.spec.image_size, self.spec.image_size), "3, h, w")
        return ae.encode(self.vae, frames.flatten(0, 2)).unflatten(0, frames.shape[:3])

    def decode(self, samples: Tensor) -> Tensor:
        """The model's sample space (B, V, N, c, h', w') -> (B, V, N, 3, h, w) frames (about [-1, 1], not clamped)."""
        if not self._latent:
            return samples
        self._check_frames(samples, "samples to decode", self.sample_shape, self._sample_dims)
        return ae.decode(self.vae, samples.flatten(0, 2)).unflatten(0, samples.shape[:3])

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one frame in the sample space."""
        s = self.spec.image_size
        if self._latent:
            return (self.spec.latent_channels, s // self.spec.latent_downsample, s // self.spec.latent_downsample)
        return (3, s, s)

    @property
    def _sample_dims(self) -> str:
        d = self.spec.latent_downsample
        return f"c, h/{d}, w/{d}" if self._latent else "3, h, w"

    def predict_state(self, state: Tensor, actions: Tensor) -> Tensor:
        """Future proprioceptive states (B, F, S) from the context states (B, C, S) and actions (B, H, A)."""
        self._check(actions=actions, state=state)
        return self._future_state(state, actions)

    def _future_state(self, state: Tensor, actions: Tensor) -> Tensor:
        delta = self.state_head(torch.cat([state.flatten(1), actions.flatten(1)], -1))
        return state[:, -1:] + delta.reshape(state.shape[0], self.spec.future, -1)

    def _check(self, **tensors: Tensor) -> None:
        """Clear errors for inputs that do not fit the model, naming the input and the dimension."""
        cfg = self.spec
        frame, dims = self.sample_shape, self._sample_dims
        expected = {
            "noisy": (cfg.views, cfg.future, *frame),
            "context": (cfg.views, cfg.context, *frame),
            "actions": (cfg.horizon, cfg.action_dim),
            "state": (cfg.context, cfg.state_dim),
        }
        names = {"noisy": f"(V, F, {dims})", "context": f"(V, C, {dims})", "actions": "(H, A)", "state": "(C, S)"}
        pixels = (3, cfg.image_size, cfg.image_size)
        batch = None
        for name, x in tensors.items():
            if not torch.is_tensor(x) or not x.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
            if tuple(x.shape[1:]) != expected[name]:
                hint = ""
                if self._latent and name in ("noisy", "context") and tuple(x.shape[-3:]) == pixels:
                    hint = " (pixel frames? the latent backbone takes latents: WorldModel.encode)"
                raise ValueError(f"{name} must have shape (B, {names[name][1:-1]}) = (B, {', '.join(map(str, expected[name]))}), "
                                 f"got {tuple(x.shape)}{hint}")
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"{name} has batch size {x.shape[0]}, other inputs have {batch}")
            batch = x.shape[0]

    def _check_memory(self, memory: Tensor | None, batch: int) -> None:
        if (memory is None) == self.spec.memory:
            raise ValueError("this world model sees the episode's first frames: pass memory (B, V, c, h', w')"
                             if self.spec.memory else "this world model has no memory frames: pass memory=None")
        if memory is not None:
            self._check_frames(memory[:, :, None], "memory[:, :, None]", self.sample_shape, self._sample_dims)
            if memory.shape[0] != batch:
                raise ValueError(f"memory has batch size {memory.shape[0]}, other inputs have {batch}")

    def _check_frames(self, x: Tensor, name: str, frame: tuple[int, int, int], dims: str) -> None:
        """encode/decode inputs: (B, V, N, *frame) for any number N of frames."""
        if not torch.is_tensor(x) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 6 or x.shape[1] != self.spec.views or tuple(x.shape[3:]) != frame:
            raise ValueError(f"{name} must have shape (B, V, N, {dims}) = (B, {self.spec.views}, N, "
                             f"{', '.join(map(str, frame))}), got {tuple(x.shape)}")
