"""Flow-matching training objective for the world model.

With x0 the clean future frames and eps Gaussian noise, the model sees x_t = (1 - t) x0 + t eps
at a noise level t drawn logit-normally (SD3's density, from diffusers) and predicts x0; the
sampler turns that into the flow velocity (x_t - x0) / t. Against compounding error in
autoregressive rollouts, the context frames are noised too, at a level the model is told
(GameNGen/Oasis); and the action chunk is sometimes replaced by a learned null chunk.

Dimension legend as in modeling_world_model.
"""

from dataclasses import dataclass

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling
from torch import Tensor

from simulator.world_model.modeling_world_model import WorldModel


@dataclass
class FlowMatchingConfig:
    context_noise_max: float = 0.1  # context frames get N(0, s^2) noise, s ~ U(0, max) per sample
    action_dropout: float = 0.1  # probability of replacing the action chunk by the null chunk
    state_loss_weight: float = 1.0
    weighting_scheme: str = "logit_normal"  # noise-level density (diffusers.training_utils)
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def __post_init__(self):
        if not 0 <= self.action_dropout < 1:
            raise ValueError(f"action_dropout must be in [0, 1), got {self.action_dropout=}")
        if self.context_noise_max < 0:
            raise ValueError(f"context_noise_max must be >= 0, got {self.context_noise_max=}")


def to_model_range(frames: Tensor) -> Tensor:
    """[0, 1] frames (as ClipDataset gives them) -> [-1, 1]."""
    return frames * 2.0 - 1.0


def flow_matching_loss(model: WorldModel, batch: dict, cfg: FlowMatchingConfig,
                       generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Loss on a ClipDataset batch: frames (masked past episode ends) plus future states."""
    context, x0 = to_model_range(batch["context"]), to_model_range(batch["future"])
    actions, state = batch["action"], batch["context_state"]
    B, device = x0.shape[0], x0.device
    t = compute_density_for_timestep_sampling(cfg.weighting_scheme, B, cfg.logit_mean, cfg.logit_std,
                                              device=device, generator=generator).clamp(1e-3, 1.0)
    eps = torch.randn(x0.shape, generator=generator, device=device)
    t_ = t.view(B, 1, 1, 1, 1, 1)
    noisy = (1.0 - t_) * x0 + t_ * eps
    context_noise = torch.rand(B, generator=generator, device=device) * cfg.context_noise_max
    context = context + context_noise.view(B, 1, 1, 1, 1, 1) * torch.randn(context.shape, generator=generator, device=device)
    drop = torch.rand(B, generator=generator, device=device) < cfg.action_dropout
    pred = model(noisy, t, context, actions, state, context_noise=context_noise, drop_actions=drop)

    frame_mask = batch["future_mask"].float().view(B, 1, -1, 1, 1, 1)  # (B, 1, F, 1, 1, 1)
    per_pixel = (pred.frames - x0).square() * frame_mask
    frame_loss = per_pixel.sum() / (frame_mask.expand_as(per_pixel).sum()).clamp_min(1.0)
    state_err = (pred.state - batch["future_state"]).square().mean(-1)
    state_loss = (state_err * batch["future_mask"].float()).sum() / batch["future_mask"].float().sum().clamp_min(1.0)
    loss = frame_loss + cfg.state_loss_weight * state_loss
    return loss, {"loss": loss.detach(), "frame_mse": frame_loss.detach(), "state_mse": state_loss.detach()}
