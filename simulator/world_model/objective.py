"""Flow-matching training objective for the world model.

With x0 the clean future frames and eps Gaussian noise, the model sees x_t = (1 - t) x0 + t eps
at a noise level t drawn logit-normally (SD3's density, from diffusers) and predicts x0; the
sampler turns that into the flow velocity (x_t - x0) / t. Against compounding error in
autoregressive rollouts, the context frames are noised too, at a level the model is told
(GameNGen/Oasis); and the action chunk is sometimes replaced by a learned null chunk.

Unrolled training (``unroll_chunks`` U > 1): clips cover U action chunks; each sample trains on
chunk d ~ U{0, ..., U-1}, and the d chunks before it are imagined by the model itself (no
gradient, the sampler's own steps), so the model learns to continue from its own predictions as
it must in a rollout, not only from real frames.

Frame weighting ``copy_last``: each future frame of each view is weighted by the inverse of
copy-last-frame's squared error on it, so the loss is a mean of error ratios to copy-last, what the
fidelity benchmark's per-frame PSNR gap measures. Under a plain mean, frames in which the robot
hardly moves (a fifth of Lift's frames; copy-last scores 45-60 dB there) carry almost none of the
loss, and the model shimmers where the scene is still (41-46 dB): the mean PSNR of its first frame
fell below copy-last's although it wins by 2-5 dB wherever the arm moves (docs/benchmarks.md, run 6).

Dimension legend as in modeling_world_model.
"""

from dataclasses import dataclass

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling
from torch import Tensor

from simulator.world_model.modeling_world_model import WorldModel


FRAME_WEIGHTINGS = ("uniform", "copy_last")


@dataclass
class FlowMatchingConfig:
    context_noise_max: float = 0.1  # context frames get N(0, s^2) noise, s ~ U(0, max) per sample
    action_dropout: float = 0.1  # probability of replacing the action chunk by the null chunk
    state_loss_weight: float = 1.0
    weighting_scheme: str = "logit_normal"  # noise-level density (diffusers.training_utils)
    logit_mean: float = 0.0  # > 0 leans towards high noise, where the motion of a chunk is decided
    logit_std: float = 1.0
    regression_share: float = 0.0  # share of each batch trained at t = 1 (the deterministic prediction)
    unroll_chunks: int = 1  # U: chunks per training clip; the model imagines the ones before the trained one
    unroll_sampling_steps: int = 2  # sampling steps for the imagined chunks
    frame_weighting: str = "uniform"  # uniform | copy_last: each frame weighted by 1 / copy-last's error on it
    frame_weight_floor: float = 0.01  # copy_last: errors below this share of the batch's mean error count as it

    def __post_init__(self):
        if self.unroll_chunks < 1 or self.unroll_sampling_steps < 1:
            raise ValueError(f"unroll_chunks and unroll_sampling_steps must be >= 1, got "
                             f"{self.unroll_chunks=} {self.unroll_sampling_steps=}")
        if not 0 <= self.regression_share <= 1:
            raise ValueError(f"regression_share must be in [0, 1], got {self.regression_share=}")
        if not 0 <= self.action_dropout < 1:
            raise ValueError(f"action_dropout must be in [0, 1), got {self.action_dropout=}")
        if self.frame_weighting not in FRAME_WEIGHTINGS:
            raise ValueError(f"frame_weighting must be one of {FRAME_WEIGHTINGS}, got {self.frame_weighting!r}")
        if not 0 < self.frame_weight_floor <= 1:
            raise ValueError(f"frame_weight_floor must be in (0, 1], got {self.frame_weight_floor=}")
        if self.context_noise_max < 0:
            raise ValueError(f"context_noise_max must be >= 0, got {self.context_noise_max=}")


def to_model_range(frames: Tensor) -> Tensor:
    """[0, 1] frames (as ClipDataset gives them) -> [-1, 1]."""
    return frames * 2.0 - 1.0


def flow_matching_loss(model: WorldModel, batch: dict, cfg: FlowMatchingConfig,
                       generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Loss on a ClipDataset batch: frames (masked past episode ends) plus future states."""
    core = getattr(model, "module", model)  # the WorldModel under a DDP wrapper
    with torch.no_grad():
        context, x0, actions, state, future_state, future_mask = unrolled_inputs(core, batch, cfg, generator)
    B, device = x0.shape[0], x0.device
    frame_mask = future_mask.float().view(B, 1, -1, 1, 1, 1)  # (B, 1, F, 1, 1, 1)
    weight = frame_weights(context[:, :, -1:], x0, frame_mask, cfg.frame_weighting, cfg.frame_weight_floor)  # clean context
    t = compute_density_for_timestep_sampling(cfg.weighting_scheme, B, cfg.logit_mean, cfg.logit_std,
                                              device=device, generator=generator).clamp(1e-3, 1.0)
    if cfg.regression_share > 0:
        t = torch.where(torch.rand(B, generator=generator, device=device) < cfg.regression_share, 1.0, t)
    eps = torch.randn(x0.shape, generator=generator, device=device)
    t_ = t.view(B, 1, 1, 1, 1, 1)
    noisy = (1.0 - t_) * x0 + t_ * eps
    context_noise = torch.rand(B, generator=generator, device=device) * cfg.context_noise_max
    context = context + context_noise.view(B, 1, 1, 1, 1, 1) * torch.randn(context.shape, generator=generator, device=device)
    drop = torch.rand(B, generator=generator, device=device) < cfg.action_dropout
    pred = model(noisy, t, context, actions, state, context_noise=context_noise, drop_actions=drop)

    per_pixel = (pred.frames - x0).square() * frame_mask
    count = frame_mask.expand_as(per_pixel).sum().clamp_min(1.0)
    frame_loss = (per_pixel * weight).sum() / count
    frame_mse = per_pixel.sum().detach() / count  # unweighted, comparable across weightings
    state_err = (pred.state - future_state).square().mean(-1)
    state_loss = (state_err * future_mask.float()).sum() / future_mask.float().sum().clamp_min(1.0)
    loss = frame_loss + cfg.state_loss_weight * state_loss
    return loss, {"loss": loss.detach(), "frame_mse": frame_mse, "state_mse": state_loss.detach()}


def frame_weights(last: Tensor, x0: Tensor, frame_mask: Tensor, scheme: str, floor: float = 0.01) -> Tensor:
    """(B, V, F, 1, 1, 1) weights of the future frames x0, mean 1 over the frames that hold data.

    ``copy_last``: 1 / copy-last's mean squared error on each frame (``last``: the last context
    frame (B, V, 1, c, h, w)), that error floored at ``floor`` x its batch mean so that frames in
    which nothing moves get a large weight but not all of it."""
    B, V, F = x0.shape[:3]
    if scheme == "uniform":
        return torch.ones(1, 1, F, 1, 1, 1, device=x0.device).expand(B, V, F, 1, 1, 1)
    present = frame_mask.expand(B, V, F, 1, 1, 1).bool()
    if not present.any():
        return torch.ones_like(frame_mask).expand(B, V, F, 1, 1, 1)
    err = (x0 - last).square().mean((3, 4, 5), keepdim=True)  # (B, V, F, 1, 1, 1)
    inv = 1.0 / err.clamp_min(floor * err[present].mean()).clamp_min(1e-12)
    return torch.where(present, inv / inv[present].mean(), 0.0)


def unrolled_inputs(model: WorldModel, batch: dict, cfg: FlowMatchingConfig, generator: torch.Generator | None = None):
    """(context, x0, actions, context state, future state, future mask) of the chunk each sample
    trains on, in the model's sample space. With U = 1 that is the clip itself; with U > 1 a
    random chunk, its context imagined by the model (chunks past an episode's end are not drawn)."""
    from simulator.world_model.sampler import WorldModelSampler

    spec = model.spec
    F, H, U = spec.future, spec.horizon, cfg.unroll_chunks
    context, future = model.encode(to_model_range(batch["context"])), model.encode(to_model_range(batch["future"]))
    actions, state = batch["action"], batch["context_state"]
    future_state, future_mask = batch["future_state"], batch["future_mask"]
    if actions.shape[1] != U * H or future.shape[2] != U * F:
        raise ValueError(f"unroll_chunks={U} needs clips of {U * H} actions and {U * F} future frames, got "
                         f"{actions.shape[1]} and {future.shape[2]} (make the clips' horizon {U} x the model's)")
    if U == 1:
        return context, future, actions, state, future_state, future_mask
    B = actions.shape[0]
    real_chunks = future_mask.view(B, U, F).any(-1).sum(-1)  # chunks that hold at least one real frame
    depth = torch.randint(U, (B,), generator=generator, device=actions.device)
    depth = torch.minimum(depth, (real_chunks - 1).clamp_min(0))
    sampler = WorldModelSampler(model, num_steps=cfg.unroll_sampling_steps)
    context, state = context.clone(), state.clone()
    for k in range(int(depth.max())):
        live = depth > k
        pred = sampler.sample_latent(context[live], actions[live, k * H:(k + 1) * H], state[live], generator)
        context[live], state[live] = sampler.slide(context[live], state[live], pred)
    d = depth.tolist()
    x0 = torch.stack([future[i, :, k * F:(k + 1) * F] for i, k in enumerate(d)])
    actions = torch.stack([actions[i, k * H:(k + 1) * H] for i, k in enumerate(d)])
    future_state = torch.stack([future_state[i, k * F:(k + 1) * F] for i, k in enumerate(d)])
    future_mask = torch.stack([future_mask[i, k * F:(k + 1) * F] for i, k in enumerate(d)])
    return context, x0, actions, state, future_state, future_mask
