"""Configuration of the action-conditioned world model (saved in config.json beside the weights)."""

from dataclasses import dataclass

BACKBONES = ("unet", "latent_transformer")


@dataclass
class WorldModelConfig:
    """Shapes the model reads and writes, and the size of its backbone.

    Dimension legend: V views, C context frames, F future frames per chunk, H actions per chunk,
    A action dim, S state dim, h x w image size; for the latent backbone c latent channels and
    d the autoencoder's downsampling (latents are c x h/d x w/d), p the transformer's patch size.
    """

    # unet: pixel-space U-Net (the CPU recipe); latent_transformer: a spatio-temporal transformer
    # over autoencoder latents (the GPU recipe)
    backbone: str = "unet"
    views: int = 2  # V
    image_size: int = 64  # h = w
    context: int = 4  # C context frames per view
    # F frames predicted per action chunk = horizon / frame stride; None: the horizon (stride 1).
    # reverie-train sets it from --frame_stride.
    future: int | None = None
    horizon: int = 8  # H actions per chunk
    action_dim: int = 7  # A
    state_dim: int = 8  # S
    # U-Net widths, one per resolution. The default is the CPU size (4.5M parameters, ~2.3 s per
    # training step of 16 clips with 2-chunk unrolls on 2 cores); (64, 128, 256) x 2 layers is 15M
    # and ~8x slower, a GPU size.
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1  # ResNet blocks per U-Net resolution
    norm_num_groups: int = 32  # group-norm groups of the U-Net and of a freshly built autoencoder
    cond_dim: int = 256  # width of the action/state/noise-level conditioning MLP (U-Net) and of the state head
    # ---- latent_transformer only ----
    # Local folder of a diffusers AutoencoderKL (one trained with world_model.autoencoder, or any
    # downloaded VAE such as Stable Diffusion's); None builds a fresh, untrained small one (tests only).
    autoencoder: str | None = None
    latent_channels: int = 4  # c; must match a loaded autoencoder
    latent_downsample: int = 4  # d; must match a loaded autoencoder (SD VAEs: 8)
    autoencoder_width: int = 64  # base width of a freshly built autoencoder (w, 2w, 4w, ... per level)
    patch_size: int = 2  # p: latent pixels per token side; tokens per view and frame = (h/(d p))^2
    depth: int = 12  # transformer blocks (each: spatial attention, temporal attention, MLP)
    heads: int = 8  # attention heads
    width: int = 512  # token width
    # ---- both backbones ----
    # Feed the network (1 - t) x_t instead of x_t: at t = 1 it sees no noise at all and is a
    # deterministic predictor of the chunk from the context and actions (the regression that beats
    # copy-last); lower noise levels add detail on top. False for models saved before it existed.
    scale_noisy_input: bool = False
    # Memory: every chunk also sees the episode's first real frame of every view (Ctrl-World's memory
    # frames), so that an object nothing has touched can stay where physics put it however long the
    # rollout. False for models saved before it existed.
    memory: bool = False
    # ---- pose inputs (U-Net only): the arm's pose as the state head predicts it, drawn into the
    # cameras from their calibrations (what every robot with calibrated cameras has; no object state).
    # reverie-train fills these in with --wrist_warp true / --front_map true. ----
    # Wrist warp: the wrist view's last context frame, warped to each future frame's pose, fed beside
    # the frames (simulator.world_model.wrist_warp): {"view": index of the wrist view, "camera":
    # WristCamera.as_dict()}. None: no warp.
    wrist_warp: dict | None = None
    # Front map: blobs where the gripper and fingertips project in a fixed camera, for the last
    # context state and each predicted one (simulator.world_model.pose_map): {"camera":
    # FixedCamera.as_dict()}. None: no map.
    front_map: dict | None = None
    # The statistics of the state the model is trained on (8 values: pose, two fingers), to undo its
    # normalisation where the pose is drawn; needed with either pose input.
    state_mean: list[float] | None = None  # the state's mean (reverie-train: the dataset's)
    state_std: list[float] | None = None  # the state's standard deviation (reverie-train: the dataset's)

    def __post_init__(self):
        if self.future is None:
            self.future = self.horizon
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {BACKBONES}")
        for name in ("views", "image_size", "context", "future", "horizon", "action_dim", "state_dim", "cond_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")
        if self.horizon % self.future:
            raise ValueError(f"future frames must divide the horizon, got {self.horizon=} {self.future=}")
        self.block_out_channels = tuple(self.block_out_channels)
        if self.wrist_warp is not None or self.front_map is not None:
            self._check_pose_inputs()
        if self.backbone == "unet":
            self._check_unet()
        else:
            self._check_latent_transformer()

    def _check_pose_inputs(self) -> None:
        if self.backbone != "unet" or self.state_dim != 8:
            raise ValueError(f"wrist_warp and front_map are built for the unet backbone and an 8-value state (pose, two "
                             f"fingers), got backbone {self.backbone!r} and state_dim {self.state_dim}")
        if self.state_mean is None or self.state_std is None or len(self.state_mean) != 8 or len(self.state_std) != 8:
            raise ValueError("wrist_warp and front_map need state_mean and state_std (8 values each) to draw the pose")
        for name, keys in (("wrist_warp", {"view", "camera"}), ("front_map", {"camera"})):
            given = getattr(self, name)
            if given is not None and set(given) != keys:
                raise ValueError(f"{name} takes the keys {sorted(keys)}, got {sorted(given)}")
        if self.wrist_warp is not None and not 0 <= self.wrist_warp["view"] < self.views:
            raise ValueError(f"wrist_warp's view must index one of {self.views} views, got {self.wrist_warp['view']}")

    def _check_unet(self) -> None:
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels must be multiples of norm_num_groups, got "
                             f"{self.block_out_channels=} {self.norm_num_groups=}")
        if self.image_size % 2 ** (len(self.block_out_channels) - 1):
            raise ValueError(f"image_size must be divisible by 2**(levels-1), got {self.image_size=} "
                             f"with {len(self.block_out_channels)} levels")

    def _check_latent_transformer(self) -> None:
        for name in ("latent_channels", "latent_downsample", "autoencoder_width", "patch_size", "depth", "heads", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")
        d = self.latent_downsample
        if d & (d - 1):
            raise ValueError(f"latent_downsample must be a power of 2, got {self.latent_downsample=}")
        if self.image_size % (d * self.patch_size):
            raise ValueError(f"image_size must be divisible by latent_downsample * patch_size, got "
                             f"{self.image_size=} {self.latent_downsample=} {self.patch_size=}")
        if self.width % self.heads or self.width % 4:
            raise ValueError(f"width must be a multiple of heads and of 4 (2D sin-cos positions), got "
                             f"{self.width=} {self.heads=}")
        if self.autoencoder is None and self.autoencoder_width % self.norm_num_groups:
            raise ValueError(f"autoencoder_width must be a multiple of norm_num_groups, got "
                             f"{self.autoencoder_width=} {self.norm_num_groups=}")
