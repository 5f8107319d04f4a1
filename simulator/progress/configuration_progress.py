"""Configuration of the progress value model (saved in config.json beside the weights)."""

from dataclasses import dataclass


@dataclass
class ProgressConfig:
    """What the model reads and how big it is.

    Dimension legend: V views, T frames per view (the current one and T-1 earlier ones),
    h x w image size, K ensemble heads.
    """

    views: tuple[str, ...] = ("front", "wrist")  # camera names, in the order frames are given (V = len)
    image_size: int = 64  # h = w
    # T frames per view: the current frame and T-1 earlier ones, ``history_stride`` frames apart, so
    # that the direction of motion is visible (a clip played backwards looks different). Earlier
    # frames before the episode start repeat the first frame.
    history: int = 2
    history_stride: int = 4  # 4 frames = 0.2 s at 20 fps
    # The CNN over all views' frames (T current/recent + 1 first frame each) stacked on channels:
    # one stride-2 level per entry. The default is the CPU size (about 1.7M parameters).
    channels: tuple[int, ...] = (32, 64, 128, 128)
    norm_num_groups: int = 8  # GroupNorm groups of the CNN
    pool_size: int = 4  # the last feature map is pooled to pool_size x pool_size (keeps where things are)
    width: int = 256  # width of the image features, the task embedding and the shared trunk
    # The task string is embedded without pretrained weights: its words and word pairs are hashed
    # into ``task_buckets`` learned embeddings (a bag of words), so any string maps to a vector.
    task_buckets: int = 1024
    ensemble: int = 5  # K heads on the shared trunk; their spread is the uncertainty
    head_width: int = 64  # hidden width of each ensemble head

    def __post_init__(self):
        self.views = tuple(self.views)
        self.channels = tuple(self.channels)
        if not self.views or len(set(self.views)) != len(self.views):
            raise ValueError(f"views must name at least one camera, each once, got {self.views=}")
        for name in ("image_size", "history", "history_stride", "norm_num_groups", "pool_size", "width",
                     "task_buckets", "ensemble", "head_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")
        if not self.channels or any(c % self.norm_num_groups for c in self.channels):
            raise ValueError(f"channels must be non-empty multiples of norm_num_groups, got "
                             f"{self.channels=} {self.norm_num_groups=}")
        if self.image_size % 2 ** len(self.channels):
            raise ValueError(f"image_size must be divisible by 2**len(channels), got {self.image_size=} "
                             f"with {len(self.channels)} levels")

    @property
    def frames_per_view(self) -> int:
        """Frames the CNN sees per view: the T current/recent ones and the episode's first one."""
        return self.history + 1
