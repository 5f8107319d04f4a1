"""Configuration of the flow-matching policy (saved in config.json beside the weights)."""

from dataclasses import dataclass


@dataclass
class FlowPolicyConfig:
    """What the policy reads, how big it is, and how it samples.

    Dimension legend: V views, h x w image size, S state dim, A action dim, H chunk length,
    N denoising steps, K of them stochastic.
    """

    views: tuple[str, ...] = ("front", "wrist")  # camera names, in the order the encoder reads them
    image_size: int = 64  # h = w
    state_dim: int = 8  # S
    action_dim: int = 7  # A
    chunk_size: int = 8  # H actions per chunk, all executed (the world model's chunk on Lift)
    # Image encoder: a CNN shared by the views, one stride-2 level per entry; the last map's cells
    # become tokens (a 4 x 4 map per view at 64 x 64 with four levels).
    channels: tuple[int, ...] = (16, 32, 64, 64)
    norm_num_groups: int = 8  # GroupNorm groups of the CNN
    # The task string, without pretrained weights: its words and word pairs hashed into
    # ``task_buckets`` learned embeddings (as the progress model reads it), one token.
    task_buckets: int = 1024
    # The transformer over [image tokens, state token, task token, action tokens].
    width: int = 128
    depth: int = 4  # transformer layers
    heads: int = 4  # attention heads
    # Sampling: N Euler steps of the flow from noise (t = 1) to actions (t = 0). The last K are
    # steps of the SDE with the same marginals when the policy samples stochastically (for RL);
    # ``noise_level`` is a in sigma_t = a sqrt(t / (1 - t)), t capped at ``t_max``; the steps'
    # std is floored at ``min_std``.
    num_steps: int = 4  # N Euler steps
    rl_steps: int = 2  # K: the last steps that are stochastic when sampling for RL
    noise_level: float = 0.5  # a
    t_max: float = 0.9  # t is capped here in sigma_t
    min_std: float = 0.05  # floor of a stochastic step's std

    def __post_init__(self):
        self.views, self.channels = tuple(self.views), tuple(self.channels)
        if not self.views or len(set(self.views)) != len(self.views):
            raise ValueError(f"views must name at least one camera, each once, got {self.views=}")
        for name in ("image_size", "state_dim", "action_dim", "chunk_size", "norm_num_groups", "task_buckets",
                     "width", "depth", "heads", "num_steps", "rl_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")
        if self.rl_steps > self.num_steps:
            raise ValueError(f"rl_steps must be <= num_steps, got {self.rl_steps=} {self.num_steps=}")
        if self.width % self.heads:
            raise ValueError(f"width must be divisible by heads, got {self.width=} {self.heads=}")
        if self.image_size % 2 ** len(self.channels):
            raise ValueError(f"image_size must be divisible by 2**len(channels), got {self.image_size=}")
        if self.noise_level < 0 or self.min_std < 0 or not 0 < self.t_max < 1:
            raise ValueError(f"need noise_level >= 0, min_std >= 0, 0 < t_max < 1, got "
                             f"{self.noise_level=} {self.min_std=} {self.t_max=}")

    @property
    def tokens_per_view(self) -> int:
        return (self.image_size // 2 ** len(self.channels)) ** 2
