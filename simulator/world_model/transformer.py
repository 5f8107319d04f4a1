"""The spatio-temporal transformer of the ``latent_transformer`` backbone (GPU scale).

Tokens: every (view, frame) latent is cut into p x p patches (diffusers ``PatchEmbed``, with 2D
sin-cos positions), and learned embeddings of the frame's time index and of the view are added.
Context and future frames are one sequence of T = C + F frames.

Blocks, factorised as in video DiTs (Latte, Genie, Oasis): spatial attention among the tokens of
one frame across all views (the views see each other), temporal attention across the T frames at
each token position, and an MLP. Each sub-layer is modulated with adaLN-zero (DiT) from a
conditioning vector PER FRAME: the frame's noise level (future frames: t; context frames: the
context-noise level) plus, for a future frame, the H/F actions that lead to it, and for a context
frame, its proprioceptive state. Attention is torch SDPA; ``WorldModel.enable_xformers_memory_efficient_attention()``
(diffusers) switches it to xformers where that is installed.

The output is, for the future frames only, a change from the last context latent through a
zero-initialised projection: untrained, the model copies the last latent, like the U-Net.

Dimension legend: B batch, V views, C context frames, F future frames, T = C + F, H action
horizon, A action dim, S state dim, c latent channels, l x l latent size, p patch size,
N = (l/p)^2 tokens per view and frame, D width.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import PatchEmbed, TimestepEmbedding, Timesteps
from torch import Tensor, nn


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1.0 + scale) + shift


class SelfAttention(nn.Module):
    """Multi-head self-attention over (batch, L, D) with RMS-normalised queries and keys (stable
    at scale). torch SDPA by default; xformers' memory-efficient kernel when switched on."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.norm_q = nn.RMSNorm(width // heads, eps=1e-6)
        self.norm_k = nn.RMSNorm(width // heads, eps=1e-6)
        self.out = nn.Linear(width, width)
        self.use_xformers = False
        self.attention_op: Callable | None = None

    def set_use_memory_efficient_attention_xformers(self, valid: bool, attention_op: Callable | None = None) -> None:
        """The diffusers hook behind ``ModelMixin.enable_xformers_memory_efficient_attention()``."""
        if valid:
            try:
                import xformers.ops  # noqa: F401
            except ImportError as e:
                raise ImportError("xformers is not installed (an optional GPU extra: pip install xformers); "
                                  "the default attention is torch SDPA") from e
        self.use_xformers, self.attention_op = valid, attention_op

    def forward(self, x: Tensor) -> Tensor:
        n, L, D = x.shape
        q, k, v = self.qkv(x).view(n, L, 3, self.heads, D // self.heads).unbind(2)  # (n, L, heads, D/heads)
        q, k = self.norm_q(q), self.norm_k(k)
        if self.use_xformers:
            import xformers.ops

            out = xformers.ops.memory_efficient_attention(q, k, v, op=self.attention_op)
        else:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        return self.out(out.reshape(n, L, D))


class SpatioTemporalBlock(nn.Module):
    """Spatial attention (per frame, all views), temporal attention (per token position), MLP;
    each pre-normed and modulated by its frame's conditioning (adaLN-zero: starts as identity)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width, elementwise_affine=False, eps=1e-6) for _ in range(3))
        self.spatial = SelfAttention(width, heads)
        self.temporal = SelfAttention(width, heads)
        self.mlp = FeedForward(width, mult=mlp_ratio, activation_fn="gelu-approximate")
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 9 * width))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x (B, V, T, N, D) tokens; cond (B, T, D) per-frame conditioning."""
        B, V, T, N, D = x.shape
        mod = self.modulation(cond)[:, None, :, None]  # (B, 1, T, 1, 9D): one modulation per frame
        shift_s, scale_s, gate_s, shift_t, scale_t, gate_t, shift_m, scale_m, gate_m = mod.chunk(9, dim=-1)

        h = _modulate(self.norms[0](x), shift_s, scale_s).transpose(1, 2).reshape(B * T, V * N, D)
        x = x + gate_s * self.spatial(h).view(B, T, V, N, D).transpose(1, 2)
        h = _modulate(self.norms[1](x), shift_t, scale_t).permute(0, 1, 3, 2, 4).reshape(B * V * N, T, D)
        x = x + gate_t * self.temporal(h).view(B, V, N, T, D).permute(0, 1, 3, 2, 4)
        return x + gate_m * self.mlp(_modulate(self.norms[2](x), shift_m, scale_m))


class SpatioTemporalTransformer(nn.Module):
    """(context latents, noisy future latents, noise levels, actions, state) -> the change of
    the future latents from the last context latent."""

    def __init__(self, views: int, context: int, future: int, horizon: int, action_dim: int, state_dim: int,
                 latent_channels: int, latent_size: int, patch_size: int, width: int, depth: int, heads: int,
                 mlp_ratio: int = 4, noise_channels: int = 256, memory: bool = False):
        super().__init__()
        if horizon % future or latent_size % patch_size or width % heads:
            raise ValueError(f"need future | horizon, patch_size | latent_size, heads | width, got {horizon=} "
                             f"{future=} {latent_size=} {patch_size=} {width=} {heads=}")
        self.context, self.future, self.patch_size, self.latent_channels = context, future, patch_size, latent_channels
        self.patch_embed = PatchEmbed(height=latent_size, width=latent_size, patch_size=patch_size,
                                      in_channels=latent_channels, embed_dim=width)  # + fixed 2D sin-cos positions
        self.memory = int(memory)  # M: 1 memory frame (the episode's first) before the context, or none
        self.time_pos = nn.Parameter(0.02 * torch.randn(self.memory + context + future, width))
        # The memory frame's conditioning, where a context frame has its state (absent without memory,
        # so that models saved before memory existed load unchanged).
        self.memory_embed = nn.Parameter(torch.zeros(1, width)) if memory else None
        self.view_pos = nn.Parameter(0.02 * torch.randn(views, width))
        self.noise_proj = Timesteps(noise_channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.noise_embed = TimestepEmbedding(noise_channels, width)
        self.action_embed = nn.Sequential(nn.Linear(horizon // future * action_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.state_embed = nn.Sequential(nn.Linear(state_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(SpatioTemporalBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.proj_out = nn.Linear(width, patch_size * patch_size * latent_channels)
        for layer in (self.modulation_out[-1], self.proj_out):  # start as "no change from the last latent"
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.gradient_checkpointing = False  # set by WorldModel.enable_gradient_checkpointing() (diffusers)

    def forward(self, context: Tensor, noisy: Tensor, t: Tensor, context_noise: Tensor, actions: Tensor,
                state: Tensor, memory: Tensor | None = None) -> Tensor:
        """context (B, V, C, c, l, l), noisy (B, V, F, c, l, l), t and context_noise (B,) in [0, 1],
        actions (B, H, A), state (B, C, S), memory (B, V, c, l, l) or None -> delta (B, V, F, c, l, l)."""
        B, V, C, _, l, _ = context.shape
        F_ = noisy.shape[2]
        frames = [context, noisy] if memory is None else [memory[:, :, None], context, noisy]
        C = C + self.memory  # the memory frame is one more (clean) context frame
        T = C + F_
        x = self.patch_embed(torch.cat(frames, dim=2).flatten(0, 2))  # (B V T, N, D)
        x = x.unflatten(0, (B, V, T)) + self.time_pos[None, None, :, None] + self.view_pos[None, :, None, None]
        cond = self._conditioning(t, context_noise, actions, state).to(x.dtype)  # (B, T, D)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, cond)
            else:
                x = block(x, cond)
        shift, scale = self.modulation_out(cond[:, C:])[:, None, :, None].chunk(2, dim=-1)
        out = self.proj_out(_modulate(self.norm_out(x[:, :, C:]), shift, scale))  # (B, V, F, N, p p c)
        return self._unpatchify(out, l)

    def _conditioning(self, t: Tensor, context_noise: Tensor, actions: Tensor, state: Tensor) -> Tensor:
        """(B, T, D): noise level + (context frames) their state / (future frames) their H/F actions."""
        B, M, C, F_ = t.shape[0], self.memory, self.context, self.future
        levels = torch.cat([t.new_zeros(B, M), context_noise[:, None].expand(B, C),
                            t[:, None].expand(B, F_)], dim=1)  # (B, T)
        dtype = self.noise_embed.linear_1.weight.dtype
        noise = self.noise_embed(self.noise_proj(levels.flatten() * 1000.0).to(dtype)).view(B, M + C + F_, -1)
        per_frame = [self.state_embed(state), self.action_embed(actions.reshape(B, F_, -1))]
        if M:
            per_frame.insert(0, self.memory_embed.to(dtype).expand(B, M, -1))
        per_frame = torch.cat(per_frame, dim=1)
        return noise + per_frame

    def _unpatchify(self, tokens: Tensor, size: int) -> Tensor:
        """(B, V, F, N, p p c) -> (B, V, F, c, l, l); tokens are row-major, as PatchEmbed made them."""
        B, V, F_ = tokens.shape[:3]
        p, c, n = self.patch_size, self.latent_channels, size // self.patch_size
        x = tokens.reshape(B, V, F_, n, n, p, p, c).permute(0, 1, 2, 7, 3, 5, 4, 6)  # (B, V, F, c, n, p, n, p)
        return x.reshape(B, V, F_, c, size, size)
