"""Configuration of the action-conditioned world model (saved in config.json beside the weights)."""

from dataclasses import dataclass

BACKBONES = ("unet",)


@dataclass
class WorldModelConfig:
    """Shapes the model reads and writes, and the size of its backbone.

    Dimension legend: V views, C context frames, F future frames per chunk, H actions per chunk,
    A action dim, S state dim, h x w image size.
    """

    backbone: str = "unet"  # pixel-space U-Net (the CPU recipe); a latent transformer comes later
    views: int = 2  # V
    image_size: int = 64  # h = w
    context: int = 4  # C context frames per view
    future: int = 4  # F frames predicted per action chunk (horizon / frame stride)
    horizon: int = 8  # H actions per chunk
    action_dim: int = 7  # A
    state_dim: int = 8  # S
    # U-Net widths, one per resolution. The default is the CPU size (4.5M parameters, ~2.5 s per
    # step of 32 clips on 2 cores); (64, 128, 256) x 2 layers is 15M and ~8x slower, a GPU size.
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 32
    cond_dim: int = 256  # width of the action/state/noise-level conditioning MLP

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {BACKBONES}")
        for name in ("views", "image_size", "context", "future", "horizon", "action_dim", "state_dim", "cond_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")
        if self.horizon % self.future:
            raise ValueError(f"future frames must divide the horizon, got {self.horizon=} {self.future=}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels must be multiples of norm_num_groups, got "
                             f"{self.block_out_channels=} {self.norm_num_groups=}")
        if self.image_size % 2 ** (len(self.block_out_channels) - 1):
            raise ValueError(f"image_size must be divisible by 2**(levels-1), got {self.image_size=} "
                             f"with {len(self.block_out_channels)} levels")
        self.block_out_channels = tuple(self.block_out_channels)
