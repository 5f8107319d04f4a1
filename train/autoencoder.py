"""Training the frame autoencoder of the latent backbone (``reverie-train autoencoder``).

    reverie-train autoencoder --dataset.root outputs/demo/dataset --output_dir outputs/vae
    reverie-train world_model --dataset.root outputs/demo/dataset --model.backbone latent_transformer \
        --model.autoencoder outputs/vae/model

Frames of every view of the training episodes (the held-out ones are never seen), reconstruction
MSE + a small KL (simulator.world_model.autoencoder.train_autoencoder), then the latent scale is
fitted on the frames and the autoencoder saved with ``save_pretrained`` in ``<output_dir>/model``.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data.clips import DatasetConfig
from simulator.world_model import autoencoder as ae
from simulator.world_model.objective import to_model_range

log = logging.getLogger(__name__)


@dataclass
class TrainAutoencoderConfig:
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(cache_frames=True))
    training: ae.AutoencoderTrainConfig = field(default_factory=ae.AutoencoderTrainConfig)
    latent_channels: int = 4  # channels of the latent map
    downsample: int = 4  # latents are (h/downsample, w/downsample)
    width: int = 64  # channels of the encoder's and decoder's convolutions
    batch_size: int = 64  # clips of one frame per view: batch_size x views frames per step
    device: str = "cuda" if torch.cuda.is_available() else "cpu"  # where it trains
    output_dir: Path = Path("outputs/autoencoder")  # the trained autoencoder
    seed: int = 0  # of the weights' initialisation and the batches' order

    def __post_init__(self):
        self.dataset.require()
        self.output_dir = Path(self.output_dir)


class _Frames:
    """Re-iterable batches (B, V, 1, 3, h, w) in [-1, 1] of single frames, in a seeded order."""

    def __init__(self, clips, batch_size: int, seed: int):
        self.loader = torch.utils.data.DataLoader(clips, batch_size=batch_size, shuffle=True, drop_last=True,
                                                  generator=torch.Generator().manual_seed(seed))

    def __iter__(self):
        return (to_model_range(batch["context"]) for batch in self.loader)


def train(cfg: TrainAutoencoderConfig) -> Path:
    train_episodes, _ = cfg.dataset.split()
    clips = cfg.dataset.clips(train_episodes, context=1, horizon=1)
    if len(clips) < cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the dataset ({len(clips)} frames)")
    torch.manual_seed(cfg.seed)
    vae = ae.build_autoencoder(cfg.latent_channels, cfg.downsample, cfg.width)
    log.info("autoencoder: %.1fM parameters, %d frames x %d views", sum(p.numel() for p in vae.parameters()) / 1e6,
             len(clips), len(clips.views))
    ae.train_autoencoder(vae, _Frames(clips, cfg.batch_size, cfg.seed), cfg.training, device=cfg.device)
    out = cfg.output_dir / "model"
    vae.save_pretrained(out)
    return out
