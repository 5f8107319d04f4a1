"""The frame autoencoder of the ``latent_transformer`` backbone: a diffusers ``AutoencoderKL``.

Built small for low-resolution robot frames (``build_autoencoder``) or loaded from a local folder
(``load_autoencoder``: any diffusers VAE, e.g. a downloaded Stable Diffusion VAE), trained on
frames with a plain loop (``train_autoencoder``: reconstruction MSE + a small KL), and scaled so
that its latents have zero mean and unit spread on the data (``fit_latent_scale``). What diffusers
already does (the architecture, the posterior, saving and loading) is not rewritten here.

Scaling follows the diffusers convention: latents = (posterior mean - shift_factor) * scaling_factor,
both stored in the autoencoder's config (shift_factor None reads as 0, as for SD VAEs).

Dimension legend: M frames (leading dimensions flattened), h x w image size, c latent channels,
d downsampling factor (latents are c x h/d x w/d). Frames are in [-1, 1].
"""

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor
from tqdm import tqdm

log = logging.getLogger(__name__)


def build_autoencoder(latent_channels: int = 4, downsample: int = 4, width: int = 64, layers_per_block: int = 1,
                      norm_num_groups: int = 32) -> AutoencoderKL:
    """A fresh, untrained AutoencoderKL with ``log2(downsample)`` downsamplings and widths
    (w, 2w, 4w, 4w, ...). With the defaults: 64x64 frames -> 4 x 16 x 16 latents, 10.8M parameters."""
    if downsample < 1 or downsample & (downsample - 1):
        raise ValueError(f"downsample must be a power of 2, got {downsample=}")
    levels = downsample.bit_length()  # 1 + log2(downsample)
    channels = tuple(width * min(2**i, 4) for i in range(levels))
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        scaling_factor=1.0,  # until fit_latent_scale measures it
    )


def load_autoencoder(path: str | Path) -> AutoencoderKL:
    """An AutoencoderKL saved with ``save_pretrained`` in a local folder, or in the ``vae/``
    subfolder of a diffusers pipeline folder (e.g. a downloaded Stable Diffusion)."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no diffusers AutoencoderKL in {path}: expected config.json and weights "
                                f"(AutoencoderKL.save_pretrained), or a pipeline folder with vae/")
    return AutoencoderKL.from_pretrained(path, use_safetensors=True)  # never a pickled .bin: unpickling can run code


def downsample_of(vae: AutoencoderKL) -> int:
    """d: how much smaller than the frames the latents are (each encoder level but the last halves)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _shift(vae: AutoencoderKL) -> float:
    return vae.config.shift_factor or 0.0


def encode(vae: AutoencoderKL, frames: Tensor) -> Tensor:
    """(M, 3, h, w) frames in [-1, 1] -> (M, c, h/d, w/d) scaled latents (the posterior mean: deterministic)."""
    mean = vae.encode(frames).latent_dist.mean
    return (mean - _shift(vae)) * vae.config.scaling_factor


def decode(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """(M, c, h/d, w/d) scaled latents -> (M, 3, h, w) frames (not clamped)."""
    return vae.decode(latents / vae.config.scaling_factor + _shift(vae)).sample


@dataclass
class AutoencoderTrainConfig:
    steps: int = 2000  # optimiser steps (the frames are re-iterated as often as needed)
    lr: float = 1e-4  # AdamW's learning rate
    weight_decay: float = 0.0  # AdamW's
    kl_weight: float = 1e-6  # weight of the KL to N(0, 1), per latent element, against the per-pixel MSE
    grad_clip: float = 1.0  # the gradient norm is clipped to this
    scale_batches: int = 32  # batches whose latents set shift_factor and scaling_factor after training
    seed: int = 0  # of the posterior samples
    progress: bool = True  # a tqdm bar

    def __post_init__(self):
        for name in ("steps", "scale_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")
        if self.kl_weight < 0 or self.lr <= 0:
            raise ValueError(f"kl_weight must be >= 0 and lr > 0, got {self.kl_weight=} {self.lr=}")


def _cycle(frames: Iterable[Tensor]) -> Iterator[Tensor]:
    """Batches of frames (M, 3, h, w) from a re-iterable (a DataLoader, a list), epoch after epoch."""
    for epoch in itertools.count():
        empty = True
        for batch in frames:
            empty = False
            yield batch.flatten(0, -4)
        if empty:
            raise ValueError("the frames yielded no batch" + (" on a second pass: give a re-iterable "
                             "(a DataLoader or a list), not a generator" if epoch else ""))


def train_autoencoder(vae: AutoencoderKL, frames: Iterable[Tensor], cfg: AutoencoderTrainConfig | None = None,
                      device: torch.device | str | None = None) -> AutoencoderKL:
    """Trains ``vae`` to reconstruct ``frames`` and sets its latent scale; returns it in eval mode.

    frames: a re-iterable of batches (..., 3, h, w) in [-1, 1] (leading dimensions are flattened,
    so a batch of clips' ``(B, V, N, 3, h, w)`` works as it is). Loss: per-pixel MSE of the
    decoded posterior sample + ``kl_weight`` x the KL per latent element. Save the result with
    ``vae.save_pretrained(folder)`` and give the folder to the world model (``autoencoder=``).
    """
    cfg = cfg or AutoencoderTrainConfig()
    device = torch.device(device) if device is not None else next(vae.parameters()).device
    vae.to(device).train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    batches = _cycle(frames)
    bar = tqdm(range(cfg.steps), desc="train autoencoder", disable=not cfg.progress)
    for step in bar:
        x = next(batches).to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(gen)).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = mse + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.grad_clip)
        opt.step()
        if step % 25 == 0 or step == cfg.steps - 1:
            bar.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.3f}")
    vae.eval()
    fit_latent_scale(vae, frames, cfg.scale_batches)
    return vae


@torch.no_grad()
def fit_latent_scale(vae: AutoencoderKL, frames: Iterable[Tensor], max_batches: int = 32) -> tuple[float, float]:
    """Sets ``shift_factor`` and ``scaling_factor`` so that the latents of ``frames`` (the first
    ``max_batches`` batches) have mean 0 and standard deviation 1; returns (shift, scale).
    Worth running on a loaded VAE too: robot frames are not the images it was scaled on."""
    device = next(vae.parameters()).device
    total, total_sq, count = 0.0, 0.0, 0
    for batch in itertools.islice(frames, max_batches):
        mean = vae.encode(batch.flatten(0, -4).to(device)).latent_dist.mean.double()
        total, total_sq, count = total + mean.sum().item(), total_sq + mean.square().sum().item(), count + mean.numel()
    if count == 0:
        raise ValueError("the frames yielded no batch to measure the latent scale on")
    shift = total / count
    std = max(total_sq / count - shift**2, 1e-12) ** 0.5
    vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
    log.info("autoencoder latents: mean %.4f, std %.4f (shift_factor, scaling_factor = %.4f, %.4f)", shift, std,
             shift, 1.0 / std)
    return shift, 1.0 / std
