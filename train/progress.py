"""Training the progress value model (``reverie-train progress``): a flat loop on accelerate primitives.

    reverie-train progress --dataset.root outputs/demo/dataset --output_dir outputs/progress
    reverie-eval progress --model outputs/progress/model --dataset.root outputs/demo/dataset

Every frame of the training episodes of the split (the held-out ones are never seen) is decoded
once into memory (``data.episodes``). A training sample is one frame with its recent frames and the episode's first
frames, and its targets:

- progress: the dataset's ``progress`` column (t/T on successful episodes; on failed ones, the
  fraction of physics milestones reached, so a failure never reaches 1);
- solved: the task is solved in this frame (``next.success`` of the previous action), 0 all
  along a failed episode;
- rewind (ReWiND): a successful episode played forward to a turning point and then backwards;
  the frame reached going back keeps its own, lower, target, and its recent frames show the
  motion reversed;
- task mismatch: the frames with a wrong task string (another task's instruction, or the same
  words with another object or colour): progress 0, not solved;
- re-generated frames (``--world_model``): every training episode is re-imagined by a frozen
  world model from its first frame with its recorded actions, and a share of the samples read
  those frames with the real episode's labels. The model then scores what the imagined
  simulator shows (blurrier, and drifting over long rollouts) as it scores real frames.

Each of the K ensemble heads weighs the samples of a batch by its own Poisson(1) bootstrap
weights, so the heads disagree where the data leave the answer open. Frames are augmented with
small shifts, blur and pixel noise (world-model frames are blurrier than real ones).

The batch of a step is a function of (seed, step, process), and the loop reuses the world model's
checkpoint helpers (EMA, ``<output_dir>/model``, exact resume, metrics.jsonl): re-running the
same command resumes and gives the losses an uninterrupted run would.

Dimension legend: B batch, V views, T frames per view, N frames of an episode, K ensemble heads,
h x w image size.
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from data.clips import DatasetConfig
from data.episodes import Episode, load_episodes, regenerate
from simulator.progress import ProgressConfig, ProgressModel, history_indices
from train import loop
from train.loop import to_device

log = logging.getLogger(__name__)

# Wrong task strings for the task-mismatch negatives, besides the dataset's other tasks: the other
# physics tasks' instructions (simulator.physics.tasks, not imported here: it loads robosuite) and
# near misses that share most words with them, so that the model must read the whole string.
DISTRACTOR_TASKS = (
    "pick up the red cube",
    "stack the red cube on the green cube",
    "put the can in the bin on the right",
    "pick up the green cube",
    "pick up the can",
    "stack the green cube on the red cube",
    "put the red cube in the bin on the left",
    "push the red cube to the left",
    "open the drawer",
    "close the gripper and wait",
)


@dataclass
class TrainProgressConfig(loop.LoopConfig):
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # the split the evaluation uses too
    # The views and the image size are filled in from the dataset.
    model: ProgressConfig = field(default_factory=ProgressConfig)
    output_dir: Path = Path("outputs/progress")  # model/ (the EMA weights), checkpoints/, metrics.jsonl
    steps: int = 1500  # 8 min on one CPU core for 200 Lift episodes at 64x64, 2 views (decoding them: 10 s)
    batch_size: int = 32  # samples per optimiser step and process, before accumulation
    lr: float = 1e-3  # peak learning rate (AdamW), after warm-up, then a cosine decay to 0
    warmup_steps: int = 50  # linear learning-rate warm-up
    ema_decay: float = 0.995  # of the weights' exponential moving average, which is what is saved
    keep_checkpoints: int = 2  # older checkpoints are deleted
    # ---- targets ----
    rewind_prob: float = 0.2  # fraction of samples that are rewound successful episodes
    mismatch_prob: float = 0.1  # fraction of samples given a wrong task string (targets 0)
    mismatch_tasks: tuple[str, ...] = DISTRACTOR_TASKS  # besides the dataset's other tasks
    success_weight: float = 1.0  # weight of the success loss beside the progress loss
    # A world model (folder) to re-generate the training episodes with; None: real frames only.
    world_model: Path | None = None
    regenerated_prob: float = 0.5  # share of samples read from the re-generated episodes
    # ---- augmentation ----
    shift: int = 3  # random translation of each view by up to this many pixels
    blur_prob: float = 0.2  # probability of a 3x3 box blur of a sample's frames
    noise: float = 0.02  # Gaussian pixel noise, standard deviation up to this

    def __post_init__(self):
        super().__post_init__()
        self.dataset.require()
        for name in ("rewind_prob", "mismatch_prob", "blur_prob", "regenerated_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)=}")
        if self.shift < 0 or self.noise < 0 or self.success_weight < 0:
            raise ValueError(f"shift, noise and success_weight must be >= 0, got {self.shift=} {self.noise=} "
                             f"{self.success_weight=}")
        self.mismatch_tasks = tuple(self.mismatch_tasks)
        self.output_dir = Path(self.output_dir)


# ---- data ---------------------------------------------------------------------------------

def rewind_indices(t: int, turn: int, history: int, stride: int) -> list[int]:
    """In-episode indices of the T = ``history`` frames the model sees at frame t of a rewound clip,
    oldest first: the episode is played forward to frame ``turn`` >= t and then backwards to t, so
    the recent frames are later ones (reflected at ``turn``). With turn == t this is history_indices."""
    if not 0 <= t <= turn:
        raise ValueError(f"a rewind goes back from the turning point: need 0 <= t <= turn, got {t=} {turn=}")
    now = 2 * turn - t  # play position of frame t
    positions = [max(0, now - (history - 1 - i) * stride) for i in range(history)]
    return [p if p <= turn else 2 * turn - p for p in positions]


def sample_batch(episodes: list[Episode], cfg: TrainProgressConfig, spec: ProgressConfig, index: int,
                 rank: int = 0, world: int = 1) -> dict:
    """Micro-batch ``index`` of process ``rank``: drawn from a generator seeded by (seed, index,
    rank) alone, so a resumed run draws the batches an uninterrupted one would.

    Returns frames (B, V, T, 3, h, w) and first_frames (B, V, 3, h, w) augmented floats in [0, 1];
    task (B strings); progress (B,) and solved (B,) targets; weights (B, K) bootstrap weights per
    head; rewind, mismatch (B,) bool: what kind each sample is; episode_index, frame_index (B,): the
    episode and frame of each sample.
    """
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index * world + rank)
    randint = lambda n: int(torch.randint(n, (1,), generator=gen))  # noqa: E731
    B, T, s = cfg.batch_size, spec.history, spec.history_stride
    successes = [e for e in episodes if e.success and e.length > 1]
    lengths = torch.tensor([e.length for e in episodes], dtype=torch.float)
    picks = torch.multinomial(lengths, B, replacement=True, generator=gen).tolist()  # uniform over frames
    rewind = (torch.rand(B, generator=gen) < cfg.rewind_prob) & bool(successes)
    mismatch = torch.rand(B, generator=gen) < cfg.mismatch_prob
    imagined = torch.rand(B, generator=gen) < cfg.regenerated_prob
    all_tasks = sorted(set(cfg.mismatch_tasks) | {e.task for e in episodes})
    frames, firsts, tasks, progress, solved, picked = [], [], [], [], [], []
    for b in range(B):
        if rewind[b]:
            e = successes[randint(len(successes))]
            turn = 1 + randint(e.length - 1)
            t = turn - 1 - randint(turn)  # 0 <= t < turn
            idx = rewind_indices(t, turn, T, s)
        else:
            e = episodes[picks[b]]
            t = randint(e.length)
            idx = history_indices(t, T, s)
        task, p, ok = e.task, float(e.progress[t]), bool(e.solved[t])
        if mismatch[b]:
            wrong = [w for w in all_tasks if w.strip().lower() != e.task.strip().lower()]
            task, p, ok = wrong[randint(len(wrong))], 0.0, False
        source = e.regenerated if imagined[b] and e.regenerated is not None else e.frames
        frames.append(source[:, idx])
        firsts.append(e.frames[:, 0])  # the real first frames: an imagined episode starts from them
        tasks.append(task)
        progress.append(p)
        solved.append(ok)
        picked.append((e.index, t))
    x, first = augment(torch.stack(frames), torch.stack(firsts), cfg, gen)
    return {"frames": x, "first_frames": first, "task": tasks, "progress": torch.tensor(progress),
            "solved": torch.tensor(solved, dtype=torch.float),
            "weights": torch.poisson(torch.ones(B, spec.ensemble), generator=gen),
            "rewind": rewind, "mismatch": mismatch, "episode_index": torch.tensor([ep for ep, _ in picked]),
            "frame_index": torch.tensor([t for _, t in picked])}


def augment(frames: Tensor, first: Tensor, cfg: TrainProgressConfig, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """uint8 frames (B, V, T, 3, h, w) and first frames (B, V, 3, h, w) -> augmented floats in [0, 1]:
    each view of a sample shifted by the same random offset in all its frames (replicated edges),
    a 3x3 blur with probability ``blur_prob``, Gaussian noise."""
    B, V, T, _, h, w = frames.shape
    x = torch.cat([frames, first[:, :, None]], dim=2).float().div_(255).reshape(B * V, (T + 1) * 3, h, w)
    if cfg.shift:
        k = cfg.shift
        padded = F.pad(x, (k, k, k, k), mode="replicate")
        dx, dy = torch.randint(2 * k + 1, (2, B * V), generator=gen).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(B * V)])
    if cfg.blur_prob:
        blur = (torch.rand(B, generator=gen) < cfg.blur_prob).repeat_interleave(V)
        if blur.any():
            x[blur] = F.avg_pool2d(x[blur], 3, stride=1, padding=1, count_include_pad=False)
    if cfg.noise:
        sigma = cfg.noise * torch.rand(B, generator=gen).repeat_interleave(V)
        x = x + sigma[:, None, None, None] * torch.randn(x.shape, generator=gen)
    x = x.clamp_(0, 1).reshape(B, V, T + 1, 3, h, w)
    return x[:, :, :T].contiguous(), x[:, :, T].contiguous()


# ---- the loss and one step ----------------------------------------------------------------

def progress_loss(model: ProgressModel, batch: dict, success_weight: float = 1.0) -> tuple[Tensor, dict]:
    """Binary cross-entropy of each head's progress (soft targets) and success logits, each head
    weighing the samples by its bootstrap weights; returns the loss and float metrics."""
    out = model(batch["frames"], batch["first_frames"], batch["task"])
    w = batch["weights"]  # (B, K)
    progress_term = _bootstrapped_bce(out.progress_logits, batch["progress"], w)
    success_term = _bootstrapped_bce(out.success_logits, batch["solved"], w)
    loss = progress_term + success_weight * success_term
    with torch.no_grad():
        metrics = {"loss": loss.item(), "progress_loss": progress_term.item(), "success_loss": success_term.item(),
                   "progress_mae": (out.progress.float() - batch["progress"]).abs().mean().item(),
                   "success_accuracy": ((out.success_logit > 0).float() == batch["solved"]).float().mean().item(),
                   "uncertainty": out.uncertainty.float().mean().item()}
    return loss, metrics


def _bootstrapped_bce(logits: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Mean over the K heads of each head's weighted mean binary cross-entropy: logits (B, K), target (B,)
    in [0, 1], weights (B, K)."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), target[:, None].expand_as(logits), reduction="none")
    return ((weights * loss).sum(0) / weights.sum(0).clamp_min(1.0)).mean()


def update(model, opt, sched, accelerator, cfg: TrainProgressConfig, episodes: list[Episode], spec: ProgressConfig,
           step: int) -> dict:
    """One optimiser step (``grad_accumulation`` micro-batches); returns float metrics."""
    seen = []  # (episode, frame) of each sample, per micro-batch, for --record_batches

    def micro_loss(micro: int):
        batch = sample_batch(episodes, cfg, spec, step * cfg.grad_accumulation + micro,
                             accelerator.process_index, accelerator.num_processes)
        seen.append(torch.stack([batch["episode_index"], batch["frame_index"]], 1).tolist())
        return progress_loss(model, to_device(batch, accelerator.device), cfg.success_weight)

    metrics = loop.optimizer_step(accelerator, model, opt, sched, cfg, micro_loss)
    loop.record_step(accelerator, cfg, cfg.output_dir, step + 1, seen, model)
    return metrics


# ---- the loop -----------------------------------------------------------------------------

def model_config_for(cfg: TrainProgressConfig, views: tuple[str, ...], frames: Tensor) -> ProgressConfig:
    """The model config with the views and image size of the dataset (frames (V, N, 3, h, w))."""
    h, w = frames.shape[-2:]
    if h != w:
        raise ValueError(f"the progress model expects square frames, the dataset has {h}x{w}")
    return ProgressConfig(**{**asdict(cfg.model), "views": tuple(views), "image_size": h})


def train(cfg: TrainProgressConfig) -> Path:
    """Trains (or resumes) until ``cfg.steps``; returns the folder of the final EMA model."""
    out = cfg.output_dir
    _check_output_dir(out)
    accelerator = loop.make_accelerator(cfg)
    train_episodes, held_out = cfg.dataset.split()
    episodes, views = load_episodes(cfg.dataset, train_episodes)
    spec = model_config_for(cfg, views, episodes[0].frames)
    model, ema, opt, sched, step = loop.prepare(accelerator, cfg, ProgressModel(**asdict(spec)),
                                                {"kind": "progress", **asdict(cfg)}, "progress")
    log.info("progress model: %.2fM parameters; %d training episodes (%d successful, %d frames), %d held out; "
             "from step %d",
             sum(p.numel() for p in model.parameters()) / 1e6, len(episodes), sum(e.success for e in episodes),
             sum(e.length for e in episodes), len(held_out), step)
    if cfg.world_model is not None:
        regenerate(episodes, cfg.world_model, cfg.dataset.root, accelerator.device)
    if not any(e.success for e in episodes):
        log.warning("no successful training episode: no rewind samples, and progress never reaches 1")

    def train_step(s: int) -> dict:
        return update(model, opt, sched, accelerator, cfg, episodes, spec, s)

    return loop.run(accelerator, model, ema, opt, sched, cfg, out, step, train_step, "train progress model")


def _check_output_dir(out: Path) -> None:
    """Refuses to resume in a folder where another kind of model was trained."""
    config = out / "model" / ProgressModel.config_name
    if config.is_file():
        found = json.loads(config.read_text()).get("_class_name")
        if found != ProgressModel.__name__:
            raise ValueError(f"{out} holds a {found} training, not a progress model's: choose another --output_dir")
