"""Sampling the world model: a few Euler steps of the flow ODE, and autoregressive rollouts.

The scheduler (diffusers FlowMatchEulerDiscreteScheduler) owns the noise levels; the loop that
calls the model is written out here. Dimension legend as in modeling_world_model; N chunks.
"""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor

from simulator.world_model.modeling_world_model import Prediction, WorldModel


class WorldModelSampler:
    def __init__(self, model: WorldModel, num_steps: int = 4, shift: float = 1.0):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps=}")
        self.model = model
        self.num_steps = num_steps
        self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)

    @torch.no_grad()
    def sample(self, context: Tensor, actions: Tensor, state: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """One chunk: frames (B, V, F, 3, h, w) in [-1, 1] and states (B, F, S).

        context (B, V, C, 3, h, w) in [-1, 1]; actions (B, H, A) and state (B, C, S) normalised.
        """
        cfg = self.model.spec
        B = context.shape[0]
        shape = (B, cfg.views, cfg.future, 3, cfg.image_size, cfg.image_size)
        x = torch.randn(shape, generator=generator, device=context.device, dtype=context.dtype)
        self.scheduler.set_timesteps(self.num_steps, device=context.device)
        for t in self.scheduler.timesteps:
            sigma = (t / 1000.0).to(context.dtype)
            pred = self.model(x, sigma.expand(B), context, actions, state)
            velocity = (x - pred.frames) / sigma  # d x_t / d t for x_t = (1 - t) x0 + t eps
            x = self.scheduler.step(velocity, t, x).prev_sample
        return Prediction(frames=x.clamp(-1.0, 1.0), state=pred.state)

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor, state: Tensor, generator: torch.Generator | None = None) -> Prediction:
        """N chunks autoregressively, the context sliding over its own predictions.

        actions (B, N, H, A); returns frames (B, V, N*F, 3, h, w) and states (B, N*F, S).
        """
        C = self.model.spec.context
        frames, states = [], []
        for n in range(actions.shape[1]):
            pred = self.sample(context, actions[:, n], state, generator)
            frames.append(pred.frames)
            states.append(pred.state)
            context = torch.cat([context, pred.frames], dim=2)[:, :, -C:]
            state = torch.cat([state, pred.state], dim=1)[:, -C:]
        return Prediction(frames=torch.cat(frames, dim=2), state=torch.cat(states, dim=1))
