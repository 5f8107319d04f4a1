"""Sampling the world model: a few Euler steps of the flow ODE, autoregressive rollouts, and
several samples per chunk for an uncertainty estimate.

The scheduler (diffusers FlowMatchEulerDiscreteScheduler) owns the noise levels; the loop that
calls the model is written out here. It runs in the model's sample space (pixels for the U-Net,
latents for a latent backbone) and decodes to frames at the end of each chunk. Dimension legend
as in modeling_world_model; N chunks, K samples.

Still pixels (``still_threshold``): a decoded pixel whose every channel differs from the last
context frame by less than the threshold keeps the last frame's value. The model predicts a change
from that frame, and where the scene is still its change is a faint shimmer (41-46 dB where the
rendered frames are identical); the arm and the cube change pixels by far more. This is the
compositing of CDNA-style video predictors (Finn et al. 2016: the previous frame wherever nothing
moves), with a fixed threshold for the mask. docs/benchmarks.md measures it on two models.

Inputs are checked once at the public entry points (``sample``, ``sample_latent``, ``rollout``):
shapes, a floating dtype, finite values and, for pixel frames, the [-1, 1] range; floating inputs
of another precision (float64 from numpy) are cast to the model's dtype. A prediction that is not
finite stays so (clamping would turn it into a white pixel): the caller checks its outputs.
"""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import Tensor

from simulator.world_model.modeling_world_model import Prediction, WorldModel

STILL_THRESHOLD = 8 / 255  # the evaluation's and the imagined env's default (docs/research_log.md, recipe log)


class WorldModelSampler:
    def __init__(self, model: WorldModel, num_steps: int = 2, shift: float = 1.0, still_threshold: float = 0.0,
                 action_guidance: float = 1.0):
        """``still_threshold``: in [0, 1] intensity (8 / 255 = 0.031); 0 keeps every predicted pixel.
        ``action_guidance`` w: classifier-free guidance on the actions, the prediction
        null + w (actions - null) with the learned null chunk of action dropout; 1 is no guidance
        (one model call per step instead of two)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps=}")
        if not 0.0 <= still_threshold < 1.0:
            raise ValueError(f"still_threshold is an intensity in [0, 1), got {still_threshold=}")
        if action_guidance < 0:
            raise ValueError(f"action_guidance must be >= 0 (1: none), got {action_guidance=}")
        self.model = model
        self.num_steps = num_steps
        self.still_threshold = still_threshold
        self.action_guidance = action_guidance
        self.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)

    @torch.no_grad()
    def sample(self, context: Tensor, actions: Tensor, state: Tensor, generator: torch.Generator | None = None,
               memory: Tensor | None = None) -> Prediction:
        """One chunk: frames (B, V, F, 3, h, w) in [-1, 1] and states (B, F, S).

        context (B, V, C, 3, h, w) in [-1, 1]; actions (B, H, A) and state (B, C, S) normalised;
        memory (B, V, 3, h, w) in [-1, 1]: the episode's first real frames, for a model with memory.
        """
        context, actions, state = self._checked(context, actions, state)
        memory = self._memory(memory, context)
        pred = self._sample_latent(self.model.encode(context), actions, state, generator, memory)
        return Prediction(frames=self.decoded(pred.frames, context[:, :, -1:]), state=pred.state)

    def decoded(self, samples: Tensor, last: Tensor | None) -> Tensor:
        """Predicted frames as a user sees them: ``samples`` (B, V, F, ...) decoded to [-1, 1] and
        clamped, every pixel within ``still_threshold`` of ``last`` (B, V, 1, 3, h, w), the frame
        before them, in every channel set back to it (``last`` None: none is, as in training unrolls)."""
        frames = self.model.decode(samples)
        frames = torch.where(torch.isfinite(frames), frames.clamp(-1.0, 1.0), frames)  # inf is no white pixel
        if self.still_threshold <= 0 or last is None:
            return frames
        still = (frames - last).abs().amax(dim=3, keepdim=True) < 2.0 * self.still_threshold  # [-1, 1] is twice [0, 1]
        return torch.where(still, last.expand_as(frames), frames)

    @torch.no_grad()
    def sample_latent(self, context: Tensor, actions: Tensor, state: Tensor, generator: torch.Generator | None = None,
                      memory: Tensor | None = None) -> Prediction:
        """``sample`` in the model's sample space: context, memory and the returned frames are encoded."""
        context, actions, state = self._checked(context, actions, state, latent=True)
        return self._sample_latent(context, actions, state, generator, memory)

    def _memory(self, memory: Tensor | None, context: Tensor) -> Tensor | None:
        """Memory frames in [-1, 1] (B, V, 3, h, w) -> the sample space (the model checks the shape)."""
        if memory is None or not self.model.spec.memory:
            return memory  # a mismatch is the model's error to name
        if not torch.is_tensor(memory) or not memory.is_floating_point() or memory.dim() != 5:
            raise TypeError(f"memory must be floating-point frames (B, V, 3, h, w) in [-1, 1], got "
                            f"{getattr(memory, 'dtype', type(memory))} of shape {tuple(getattr(memory, 'shape', ()))}")
        return self.model.encode(memory.to(context)[:, :, None])[:, :, 0]

    def _sample_latent(self, context: Tensor, actions: Tensor, state: Tensor, generator: torch.Generator | None,
                       memory: Tensor | None = None) -> Prediction:
        model, B = self.model, context.shape[0]
        spec = model.spec
        shape = (B, spec.views, spec.future, *model.sample_shape)
        x = torch.randn(shape, generator=generator, device=context.device, dtype=context.dtype)
        self.scheduler.set_timesteps(self.num_steps, device=context.device)
        pose = model.pose_inputs(context, actions, state)  # once for every step and both guidance rows
        for t in self.scheduler.timesteps:
            sigma = (t / 1000.0).to(context.dtype)
            pred = self._denoise(x, sigma.expand(B), context, actions, state, memory, pose)
            velocity = (x - pred.frames) / sigma  # d x_t / d t for x_t = (1 - t) x0 + t eps
            x = self.scheduler.step(velocity, t, x).prev_sample
        return Prediction(frames=x, state=pred.state)

    def _denoise(self, x: Tensor, t: Tensor, context: Tensor, actions: Tensor, state: Tensor,
                 memory: Tensor | None, pose: Tensor | None = None) -> Prediction:
        """The model's clean prediction, guided on the actions when ``action_guidance`` != 1
        (conditional and null-action rows in one batch); the states are the conditional ones."""
        w = self.action_guidance
        if w == 1.0:
            return self.model(x, t, context, actions, state, memory=memory, pose=pose)
        two = lambda v: None if v is None else torch.cat([v, v])
        drop = torch.arange(2 * x.shape[0], device=x.device) >= x.shape[0]
        both = self.model(two(x), two(t), two(context), two(actions), two(state), drop_actions=drop, memory=two(memory),
                          pose=two(pose))
        cond, null = both.frames.chunk(2)
        return Prediction(frames=null + w * (cond - null), state=both.state[:x.shape[0]])

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor, state: Tensor, generator: torch.Generator | None = None,
                memory: Tensor | None = None) -> Prediction:
        """N chunks autoregressively, the context sliding over its own predictions (and every chunk
        seeing the same ``memory`` frames, for a model with memory).

        actions (B, N, H, A); returns frames (B, V, N*F, 3, h, w) and states (B, N*F, S).
        """
        context, actions, state = self._checked(context, actions, state, chunks=True)
        latent, last = self.model.encode(context), context[:, :, -1:]
        memory = self._memory(memory, context)
        frames, states = [], []
        for n in range(actions.shape[1]):
            pred = self._sample_latent(latent, actions[:, n], state, generator, memory)
            chunk = self.decoded(pred.frames, last)
            frames.append(chunk)
            states.append(pred.state)
            latent, state = self.slide(latent, state, chunk, pred.state)
            last = chunk[:, :, -1:]
        return Prediction(frames=torch.cat(frames, dim=2), state=torch.cat(states, dim=1))

    def _checked(self, context: Tensor, actions: Tensor, state: Tensor, latent: bool = False,
                 chunks: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """The inputs of a public entry point, checked and cast to the model's dtype (module doc).
        ``latent``: the context is in the sample space (no range); ``chunks``: actions (B, N, H, A)."""
        model, spec = self.model, self.model.spec
        frame = model.sample_shape if latent else (3, spec.image_size, spec.image_size)
        frame_dims = model._sample_dims if latent else "3, h, w"
        B = context.shape[0] if torch.is_tensor(context) else "B"
        expected = {  # name: (dimension names, shape; "N" any)
            "context": (f"B, V, C, {frame_dims}", (B, spec.views, spec.context, *frame)),
            "actions": ("B, N, H, A", (B, "N", spec.horizon, spec.action_dim)) if chunks
            else ("B, H, A", (B, spec.horizon, spec.action_dim)),
            "state": ("B, C, S", (B, spec.context, spec.state_dim)),
        }
        hint = (f"; a longer chunk goes as actions.unflatten(1, (N, {spec.horizon}))" if chunks
                else f": the model imagines chunks of {spec.horizon} actions (rollout takes several)")
        for name, x in (("context", context), ("actions", actions), ("state", state)):
            dims, shape = expected[name]
            got = f"{x.dtype} of shape {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
            if not torch.is_tensor(x) or not x.is_floating_point():
                if name == "context" and not latent:
                    raise TypeError(f"context must be floating-point frames in [-1, 1], got {got}: convert uint8 "
                                    f"frames with frames.float() / 127.5 - 1")
                raise TypeError(f"{name} must be a floating-point tensor, got {got}")
            if x.dim() != len(shape) or any(w != "N" and g != w for g, w in zip(x.shape, shape)):
                raise ValueError(f"{name} must have shape ({dims}) = ({', '.join(map(str, shape))}), got "
                                 f"{tuple(x.shape)}{hint if name == 'actions' else ''}")
            if not torch.isfinite(x).all():
                bad = tuple(torch.nonzero(~torch.isfinite(x))[0].tolist())
                raise ValueError(f"{name} must be finite, got {x[bad].item()} at index {bad} of {name} "
                                 f"{tuple(x.shape)}")
        if chunks and actions.shape[1] == 0:
            raise ValueError(f"actions must hold at least one chunk (N >= 1), got {tuple(actions.shape)}")
        if not latent:
            low, high = context.aminmax()
            if low < -1.001 or high > 1.001:  # a little slack for low-precision frames
                raise ValueError(f"context must be in [-1, 1], got values in [{low.item():.4g}, {high.item():.4g}] "
                                 f"(frames in [0, 255] go as frames / 127.5 - 1, frames in [0, 1] as frames * 2 - 1)")
        return context.to(model.dtype), actions.to(model.dtype), state.to(model.dtype)

    def slide(self, context: Tensor, state: Tensor, chunk: Tensor, chunk_state: Tensor) -> tuple[Tensor, Tensor]:
        """The next chunk's context (sample space) and context states: the last C of old + predicted.
        ``chunk``: the predicted frames as a user sees them (``decoded``), encoded again here."""
        C = self.model.spec.context
        return (torch.cat([context, self.model.encode(chunk)], dim=2)[:, :, -C:],
                torch.cat([state, chunk_state], dim=1)[:, -C:])


@torch.no_grad()
def regenerate_episodes(sampler: WorldModelSampler, episodes: list[tuple[Tensor, Tensor, Tensor]], normalizer,
                        batch_size: int = 32, seed: int = 0, desc: str | None = "re-generate episodes",
                        with_states: bool = False) -> list:
    """Whole episodes re-imagined by the world model from their first frames and recorded actions.

    ``episodes``: (frames (V, N, 3, h, w) uint8, actions (N, A) raw, states (N, S) raw) each. Each is
    rolled out open loop from its first frame (earlier context frames repeat it, as training pads
    them) with its own actions; returns (V, N, 3, h, w) uint8 per episode: the real first frame,
    then the imagined ones. Needs a model of frame stride 1 (one frame per action). ``normalizer``:
    a ``simulator.normalization.Normalizer`` with the statistics the model was trained with. With ``with_states``
    each item is (frames, states (N, S) raw: the real first state, then the imagined ones).
    """
    from tqdm import tqdm

    from simulator import keys

    spec = sampler.model.spec
    if spec.future != spec.horizon:
        raise ValueError(f"re-generating episodes frame by frame needs a world model of frame stride 1, this one "
                         f"predicts {spec.future} frames per {spec.horizon} actions")
    device = next(sampler.model.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    out = []
    for i in tqdm(range(0, len(episodes), batch_size), desc=desc, disable=desc is None, leave=False):
        batch = episodes[i:i + batch_size]
        steps = max(f.shape[1] for f, _, _ in batch) - 1
        chunks = max(1, -(-steps // spec.horizon))
        actions = torch.zeros(len(batch), chunks * spec.horizon, spec.action_dim)
        for b, (_, a, _) in enumerate(batch):
            actions[b, :a.shape[0] - 1] = normalizer.normalize(keys.ACTION, a[:-1].float())
        first = torch.stack([f[:, 0] for f, _, _ in batch]).float() / 127.5 - 1.0  # (b, V, 3, h, w)
        context = first[:, :, None].expand(-1, -1, spec.context, -1, -1, -1)
        state = normalizer.normalize(keys.STATE, torch.stack([s[0] for _, _, s in batch]).float())
        state = state[:, None].expand(-1, spec.context, -1)
        pred = sampler.rollout(context.to(device), actions.unflatten(1, (chunks, spec.horizon)).to(device),
                               state.to(device), generator=gen, memory=first.to(device) if spec.memory else None)
        frames = ((pred.frames.cpu() + 1) * 127.5).round().to(torch.uint8)
        states = normalizer.unnormalize(keys.STATE, pred.state.float().cpu())
        for b, (f, _, s) in enumerate(batch):
            n = f.shape[1]
            regen = torch.cat([f[:, :1], frames[b, :, :n - 1]], 1)
            out.append((regen, torch.cat([s[:1].float(), states[b, :n - 1]])) if with_states else regen)
    return out
