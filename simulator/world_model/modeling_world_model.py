"""The action-conditioned video world model: a pure function of (noisy future, noise level,
context frames, action chunk, state) that predicts the clean future frames of every view.

Dimension legend: B batch, V views, C context frames, F future frames, H action horizon,
A action dim, S state dim, h x w image size. Frames are in [-1, 1]; actions and states are
normalised (data.clips.Normalizer).

Backbone ``unet``: a diffusers ``UNet2DModel`` over all views' frames stacked on channels
(V*C context + V*F noisy future frames in, V*F frames out). The action chunk, the context state
and the context-noise level are embedded by an MLP and added to the noise-level embedding, which
modulates every ResNet normalisation (adaptive group norm, ``scale_shift``): the actions reach
every layer. The output is a change from the last context frame, and the last layer starts at
zero, so an untrained model predicts copy-last-frame and learning starts from that baseline.
A small MLP predicts the future proprioceptive states from the context state and the actions.
"""

from dataclasses import dataclass

import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import Tensor, nn

from simulator.world_model.configuration_world_model import WorldModelConfig


@dataclass
class Prediction:
    frames: Tensor  # (B, V, F, 3, h, w) in [-1, 1] (the model's sample space: latents for a latent backbone)
    state: Tensor  # (B, F, S) normalised
    uncertainty: Tensor | None = None  # (B,) spread of several samples (WorldModelSampler.sample(num_samples=...))


def _sinusoid(x: Tensor, dim: int) -> Tensor:
    """(B,) values in [0, 1] -> (B, dim) sinusoidal features."""
    half = dim // 2
    freqs = torch.exp(-torch.arange(half, device=x.device, dtype=torch.float32) * (9.0 / half))
    angles = 1000.0 * x.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class WorldModel(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, backbone: str = "unet", views: int = 2, image_size: int = 64, context: int = 4,
                 future: int = 4, horizon: int = 8, action_dim: int = 7, state_dim: int = 8,
                 block_out_channels: tuple[int, ...] = (32, 64, 128, 128), layers_per_block: int = 1,
                 norm_num_groups: int = 32, cond_dim: int = 256):
        super().__init__()
        from diffusers import UNet2DModel

        cfg = WorldModelConfig(backbone, views, image_size, context, future, horizon, action_dim, state_dim,
                               tuple(block_out_channels), layers_per_block, norm_num_groups, cond_dim)
        self.spec = cfg
        levels = len(cfg.block_out_channels)
        time_dim = cfg.block_out_channels[0] * 4
        self.unet = UNet2DModel(
            sample_size=cfg.image_size,
            in_channels=3 * cfg.views * (cfg.context + cfg.future),
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
        self.null_actions = nn.Parameter(torch.zeros(cfg.horizon, cfg.action_dim))  # for action dropout
        state_in = cfg.context * cfg.state_dim + cfg.horizon * cfg.action_dim
        self.state_head = nn.Sequential(nn.Linear(state_in, cfg.cond_dim), nn.SiLU(), nn.Linear(cfg.cond_dim, cfg.cond_dim),
                                        nn.SiLU(), nn.Linear(cfg.cond_dim, cfg.future * cfg.state_dim))
        nn.init.zeros_(self.state_head[-1].weight)  # start as "the state does not change"
        nn.init.zeros_(self.state_head[-1].bias)

    def forward(self, noisy: Tensor, t: Tensor, context: Tensor, actions: Tensor, state: Tensor,
                context_noise: Tensor | None = None, drop_actions: Tensor | None = None) -> Prediction:
        """Predicts the clean future frames (B, V, F, 3, h, w) from noisy ones at noise level t (B,),
        and the future states (B, F, S) (one call, so that DDP sees every parameter used).

        context (B, V, C, 3, h, w); actions (B, H, A); state (B, C, S); context_noise (B,): the
        noise level added to the context frames (default 0); drop_actions (B,) bool: replace the
        actions by a learned null chunk (classifier-free-style dropout).
        """
        self._check(noisy=noisy, context=context, actions=actions, state=state)
        cfg = self.spec
        B = noisy.shape[0]
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
        actions_in = actions
        if drop_actions is not None:
            actions = torch.where(drop_actions[:, None, None], self.null_actions.expand_as(actions), actions)
        if context_noise is None:
            context_noise = torch.zeros(B, device=noisy.device)
        cond = self.cond(torch.cat([actions.flatten(1), state.flatten(1), _sinusoid(context_noise, cfg.cond_dim)], -1))
        h = w = cfg.image_size
        x = torch.cat([context.reshape(B, -1, h, w), noisy.reshape(B, -1, h, w)], dim=1)
        delta = self.unet(x, t * 1000.0, class_labels=cond).sample
        last = context[:, :, -1:].expand(-1, -1, cfg.future, -1, -1, -1)
        frames = last + delta.reshape(B, cfg.views, cfg.future, 3, h, w)
        # The state head sees the real actions: action dropout is for the frames' guidance only.
        return Prediction(frames=frames, state=self._future_state(state, actions_in))

    # The sample space the diffusion runs in. Pixels for the U-Net; a latent backbone overrides
    # these three with its autoencoder, and the objective and sampler go through them.
    def encode(self, frames: Tensor) -> Tensor:
        """(B, V, N, 3, h, w) frames in [-1, 1] -> the model's sample space."""
        return frames

    def decode(self, samples: Tensor) -> Tensor:
        """The model's sample space -> (B, V, N, 3, h, w) frames in [-1, 1]."""
        return samples

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one frame in the sample space."""
        return (3, self.spec.image_size, self.spec.image_size)

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
        s = cfg.image_size
        expected = {
            "noisy": (cfg.views, cfg.future, 3, s, s),
            "context": (cfg.views, cfg.context, 3, s, s),
            "actions": (cfg.horizon, cfg.action_dim),
            "state": (cfg.context, cfg.state_dim),
        }
        names = {"noisy": "(V, F, 3, h, w)", "context": "(V, C, 3, h, w)", "actions": "(H, A)", "state": "(C, S)"}
        batch = None
        for name, x in tensors.items():
            if not torch.is_tensor(x) or not x.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
            if tuple(x.shape[1:]) != expected[name]:
                raise ValueError(f"{name} must have shape (B, {names[name][1:-1]}) = (B, {', '.join(map(str, expected[name]))}), "
                                 f"got {tuple(x.shape)}")
            if batch is not None and x.shape[0] != batch:
                raise ValueError(f"{name} has batch size {x.shape[0]}, other inputs have {batch}")
            batch = x.shape[0]
