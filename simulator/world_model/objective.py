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
    state_loss_weight: float = 1.0  # weight of the state head's loss beside the frames'
    weighting_scheme: str = "logit_normal"  # noise-level density (diffusers.training_utils)
    logit_mean: float = 0.0  # > 0 leans towards high noise, where the motion of a chunk is decided
    logit_std: float = 1.0  # spread of the logit-normal noise levels
    regression_share: float = 0.0  # share of each batch trained at t = 1 (the deterministic prediction)
    unroll_chunks: int = 1  # U: chunks per training clip; the model imagines the ones before the trained one
    unroll_sampling_steps: int = 2  # sampling steps for the imagined chunks

    def __post_init__(self):
        if self.unroll_chunks < 1 or self.unroll_sampling_steps < 1:
            raise ValueError(f"unroll_chunks and unroll_sampling_steps must be >= 1, got "
                             f"{self.unroll_chunks=} {self.unroll_sampling_steps=}")
        if not 0 <= self.regression_share <= 1:
            raise ValueError(f"regression_share must be in [0, 1], got {self.regression_share=}")
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
    core = getattr(model, "module", model)  # the WorldModel under a DDP wrapper
    with torch.no_grad():
        context, x0, actions, state, future_state, future_mask = unrolled_inputs(core, batch, cfg, generator)
        memory = memory_of(core, batch)
    B, device = x0.shape[0], x0.device
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
    pred = model(noisy, t, context, actions, state, context_noise=context_noise, drop_actions=drop, memory=memory)

    frame_mask = future_mask.float().view(B, 1, -1, 1, 1, 1)  # (B, 1, F, 1, 1, 1)
    per_pixel = (pred.frames - x0).square() * frame_mask
    frame_loss = per_pixel.sum() / (frame_mask.expand_as(per_pixel).sum()).clamp_min(1.0)
    state_term = state_loss(pred.state, future_state, future_mask)
    loss = frame_loss + cfg.state_loss_weight * state_term
    return loss, {"loss": loss.detach(), "frame_mse": frame_loss.detach(), "state_mse": state_term.detach()}


def state_loss(pred: Tensor, future_state: Tensor, future_mask: Tensor) -> Tensor:
    """Mean squared error of predicted states (B, F, S) over the future frames inside their episode
    (``future_mask`` (B, F))."""
    mask = future_mask.float()
    return ((pred - future_state).square().mean(-1) * mask).sum() / mask.sum().clamp_min(1.0)


def memory_of(model: WorldModel, batch: dict) -> Tensor | None:
    """The memory frames of a model with memory: the clips' episode first frames (``first``) in the sample space."""
    if not model.spec.memory:
        return None
    if "first" not in batch:
        raise KeyError("a world model with memory trains on clips with the episode's first frames (batch['first'])")
    return model.encode(to_model_range(batch["first"])[:, :, None])[:, :, 0]


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
    context, state, memory = context.clone(), state.clone(), memory_of(model, batch)
    for k in range(int(depth.max())):
        live = depth > k
        pred = sampler.sample_latent(context[live], actions[live, k * H:(k + 1) * H], state[live], generator,
                                     memory=None if memory is None else memory[live])
        chunk = sampler.decoded(pred.frames, None)
        context[live], state[live] = sampler.slide(context[live], state[live], chunk, pred.state)
    d = depth.tolist()
    x0 = torch.stack([future[i, :, k * F:(k + 1) * F] for i, k in enumerate(d)])
    actions = torch.stack([actions[i, k * H:(k + 1) * H] for i, k in enumerate(d)])
    future_state = torch.stack([future_state[i, k * F:(k + 1) * F] for i, k in enumerate(d)])
    future_mask = torch.stack([future_mask[i, k * F:(k + 1) * F] for i, k in enumerate(d)])
    return context, x0, actions, state, future_state, future_mask
