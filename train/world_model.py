"""Training the world model: a flat loop on accelerate primitives.

    reverie-train world_model --dataset.root outputs/demo/dataset --output_dir outputs/world_model
    accelerate launch -m train.cli world_model ...      # the same code on several GPUs
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m train.cli world_model ...  # CPUs

bf16 autocast (``--mixed_precision bf16``), gradient accumulation, gradient clipping, an EMA of
the weights (used for inference), a checkpoint every N steps and on Ctrl-C/SIGTERM, TensorBoard
logs and a progress bar. Re-running the same command resumes from the last checkpoint: the
data order and the diffusion noise of step k are functions of (seed, k), so a resumed run
computes exactly the losses an uninterrupted one would.
"""

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from data.clips import ClipDataset, DatasetConfig
from data.sampling import batches_per_epoch, epoch_batches
from simulator import keys
from simulator.env import NORMALIZATION_FILE, load_normalizer
from simulator.world_model import FlowMatchingConfig, WorldModel, WorldModelConfig, flow_matching_loss
from simulator.world_model.objective import state_loss
from train import loop
from train.checkpoint import finished
from train.loop import to_device

log = logging.getLogger(__name__)


@dataclass
class TrainWorldModelConfig(loop.LoopConfig):
    # Frames are decoded into memory once (--dataset.cache_frames false for datasets larger than memory).
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(cache_frames=True))
    # Shapes the data decides (views, image size, action/state dims) are filled in from the dataset.
    # The CPU recipe (docs/research_log.md, run 3): the noisy input scaled by (1 - t), a quarter of
    # each batch at t = 1 (the deterministic prediction), no unrolls; memory frames, which took the
    # expert from 0.37 to 0.84 in imagination (1.00 in physics; docs/benchmarks.md, "World model:
    # keeping the world, one change at a time").
    model: WorldModelConfig = field(default_factory=lambda: WorldModelConfig(scale_noisy_input=True, memory=True))
    objective: FlowMatchingConfig = field(default_factory=lambda: FlowMatchingConfig(regression_share=0.25))
    frame_stride: int = 1  # frames per predicted frame: horizon / stride frames are predicted per chunk
    # model/ (the final EMA weights), checkpoints/, metrics.jsonl; the first cycle's in first_cycle/
    output_dir: Path = Path("outputs/world_model")
    # 80-100 min on 2 CPU cores with the default model and batch 16; then the second cycle
    steps: int = 3600
    # Steps of a second cosine cycle after ``steps``: from the first cycle's EMA weights, with a fresh
    # warm-up, schedule, optimiser and EMA (0: none). On the learned family it lifted Spearman from
    # 0.54 to 0.96 (seed 0) and from 0.40 to 0.73 (seed 1) (docs/benchmarks.md, "A second cosine cycle").
    second_cycle: int = 600
    num_workers: int = 0  # DataLoader workers (0: batches are read in the training process)
    # Start from a saved world model's weights instead of random ones: fine-tuning, e.g. on a dataset
    # that adds a policy's own rollouts (reverie-collect --policy) so that its failures look like failures.
    init_from: Path | None = None
    # Feed the U-Net the wrist view warped to the predicted poses (simulator.world_model.wrist_warp;
    # robosuite's Panda wrist camera). A model trained without it can be the --init_from: the warp's
    # input channels start at zero weight.
    wrist_warp: bool = False
    # Feed the U-Net blobs where the gripper projects in the front view (simulator.world_model.pose_map;
    # the front camera of the dataset's task), for the last context state and each predicted one.
    front_map: bool = False
    # Passes over the training clips' states and actions that fit the state head alone, 256 clips a
    # step, before the frames train (no frames: about 2 min on 2 cores for the demo's 270 training
    # episodes); it then stays frozen and the frames' pose inputs come from it. Trained beside the
    # frames instead (0), it sees 16 clips a step and predicts the arm 2-3x further off
    # (docs/benchmarks.md, "The state head fitted alone").
    state_head_epochs: int = 150

    def __post_init__(self):
        super().__post_init__()
        if self.state_head_epochs < 0:
            raise ValueError(f"state_head_epochs must be >= 0, got {self.state_head_epochs=}")
        self.dataset.require()
        self.output_dir = Path(self.output_dir)
        self.init_from = Path(self.init_from) if self.init_from is not None else None
        if self.second_cycle < 0:
            raise ValueError(f"second_cycle must be >= 0 steps, got {self.second_cycle=}")


# ---- data ---------------------------------------------------------------------------------

def make_train_set(cfg: TrainWorldModelConfig) -> tuple[ClipDataset, int]:
    """Training clips, and how many episodes are held out (never trained on)."""
    train_episodes, held_out = cfg.dataset.split()
    clips = cfg.dataset.clips(train_episodes, context=cfg.model.context,
                              horizon=cfg.model.horizon * cfg.objective.unroll_chunks, stride=cfg.frame_stride)
    return clips, len(held_out)


def model_config_for(cfg: TrainWorldModelConfig, data: ClipDataset) -> WorldModelConfig:
    """The model config with the shapes that the dataset's metadata decides."""
    features = data.meta.features
    h, w, _ = features[keys.image_key(data.views[0])]["shape"]
    if h != w:
        raise ValueError(f"the world model expects square frames, the dataset has {h}x{w}")
    decided = {"views": len(data.views), "image_size": h, "future": cfg.model.horizon // cfg.frame_stride,
               "action_dim": features[keys.ACTION]["shape"][0], "state_dim": features[keys.STATE]["shape"][0]}
    unset = asdict(WorldModelConfig()) | {"future": cfg.model.horizon}  # future defaults to the horizon
    for name, value in decided.items():  # a flag the data overrules is an error, not silently replaced
        given = getattr(cfg.model, name)
        if given not in (unset[name], value):
            how = "--frame_stride" if name == "future" else "the dataset"
            raise ValueError(f"--model.{name} {given} is decided by {how} ({value} here): drop the flag")
    if cfg.wrist_warp:
        from simulator.world_model.wrist_warp import PANDA_WRIST

        if "wrist" not in data.views:
            raise ValueError(f"--wrist_warp needs a wrist view; the dataset's views are {data.views}")
        decided["wrist_warp"] = {"view": data.views.index("wrist"), "camera": PANDA_WRIST.as_dict()}
    if cfg.front_map:
        decided["front_map"] = {"camera": _front_camera(data).as_dict()}
    if cfg.wrist_warp or cfg.front_map:
        decided["state_mean"] = data.normalizer.mean[keys.STATE].tolist()
        decided["state_std"] = data.normalizer.std[keys.STATE].tolist()
    return WorldModelConfig(**{**asdict(cfg.model), **decided})


def _front_camera(data: ClipDataset):
    """The front camera of the task whose instruction the dataset records (its calibration is the
    task's camera spec)."""
    from simulator.physics.tasks import TASKS
    from simulator.world_model.pose_map import FixedCamera

    if "front" not in data.views:
        raise ValueError(f"--front_map needs a front view; the dataset's views are {data.views}")
    texts = set(data.tasks.values())
    found = [t for t in TASKS.values() if t.instruction in texts and t.cameras["front"].pos is not None]
    if len(found) != 1:
        raise ValueError(f"--front_map needs the front camera's calibration: the dataset's tasks {sorted(texts)} "
                         f"match {len(found)} of ours ({', '.join(t.instruction for t in TASKS.values())})")
    cam = found[0].cameras["front"]
    return FixedCamera(cam.pos, cam.lookat, cam.fovy)


def batches_from(dataset, cfg: TrainWorldModelConfig, step: int, rank: int = 0, world: int = 1):
    """This process's batches from global micro-step ``step`` on.

    Epoch e is a permutation seeded by (seed, e); micro-step k of process r takes the slice
    (k * world + r) of it, so processes see disjoint clips and the order depends only on the step.
    """
    B = cfg.batch_size
    per_epoch = batches_per_epoch(len(dataset), B, world)
    while True:
        epoch, offset = divmod(step, per_epoch)
        mine = epoch_batches(len(dataset), B, world, cfg.seed, epoch)[offset:, rank].flatten().tolist()
        loader = torch.utils.data.DataLoader(dataset, batch_size=B, sampler=mine, num_workers=cfg.num_workers,
                                             drop_last=True)
        for batch in loader:
            yield batch
            step += 1


# ---- the loop -----------------------------------------------------------------------------

def train(cfg: TrainWorldModelConfig) -> Path:
    """Trains (or resumes) ``cfg.steps``, then the second cycle; returns the folder of the final EMA model."""
    if not cfg.second_cycle:
        return train_cycle(cfg)
    first = replace(cfg, second_cycle=0, output_dir=cfg.output_dir / "first_cycle")
    if finished(cfg.output_dir, cfg.second_cycle) and finished(first.output_dir, first.steps):
        return cfg.output_dir / "model"  # nothing to do (and no dataset to decode for it)
    if finished(first.output_dir, first.steps):
        folder = first.output_dir / "model"
    elif (cfg.output_dir / "checkpoints").is_dir():  # resuming them would go on from other weights
        raise ValueError(f"{cfg.output_dir} holds checkpoints that do not follow a first cycle of {first.steps} "
                         f"steps in {first.output_dir} (another --steps, or a run from before second cycles): "
                         f"give another --output_dir, or the --steps it was trained with")
    else:
        folder = train_cycle(first)
    return train_cycle(replace(cfg, second_cycle=0, init_from=folder, steps=cfg.second_cycle))


def train_cycle(cfg: TrainWorldModelConfig) -> Path:
    """One cosine cycle: trains (or resumes) until ``cfg.steps``; returns the folder of its EMA model."""
    out = cfg.output_dir
    accelerator = loop.make_accelerator(cfg)
    train_set, held_out = make_train_set(cfg)
    if cfg.init_from is not None and (cfg.init_from / NORMALIZATION_FILE).is_file():
        # A fine-tune keeps the statistics its model was trained with (a merged dataset's would shift
        # every input it learned to read); they are saved beside the result again.
        train_set.normalize_with(load_normalizer(cfg.init_from))
    model = WorldModel(**asdict(model_config_for(cfg, train_set)))
    if cfg.init_from is not None:
        load_weights(model, cfg.init_from)  # a resumed run then replaces them with its checkpoint's
    if cfg.state_head_epochs:
        if not any((out / "checkpoints").glob("step_*")):  # else the checkpoint holds the fitted head
            fit_state_head(model, train_set, -(-cfg.state_head_epochs * len(train_set) // HEAD_BATCH), cfg.seed)
        model.state_head.requires_grad_(False)
    model, ema, opt, sched, step = loop.prepare(accelerator, cfg, model, asdict(cfg), "world_model")
    log.info("world model: %.2fM parameters, %d train clips, %d held-out episodes, from step %d",
             sum(p.numel() for p in model.parameters()) / 1e6, len(train_set), held_out, step)
    data = batches_from(train_set, cfg, step * cfg.grad_accumulation, accelerator.process_index,
                        accelerator.num_processes)

    def train_step(s: int) -> dict:
        return update(model, opt, sched, accelerator, cfg, data, s)

    # The action/state statistics travel with the model: ImaginedEnv normalises a policy's actions with them.
    stats = {NORMALIZATION_FILE: json.dumps(train_set.stats, indent=1)}
    return loop.run(accelerator, model, ema, opt, sched, cfg, out, step, train_step, "train world model", stats)


HEAD_BATCH = 256  # clips per step of fit_state_head


def fit_state_head(model: WorldModel, data: ClipDataset, steps: int, seed: int, batch_size: int = HEAD_BATCH,
                   lr: float = 1e-3) -> float:
    """Fits ``model``'s state head alone (AdamW, cosine schedule) on the context states, actions and
    future states of ``data``'s clips (its first chunk where clips hold several): the loss of
    ``flow_matching_loss`` without the frames. Returns the last step's loss."""
    from tqdm import tqdm

    spec, head = model.spec, model.state_head
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    bar = tqdm(range(steps), desc="fit the state head", leave=False)
    for _ in bar:
        w = data.state_windows(torch.randint(len(data), (batch_size,), generator=gen))
        pred = model.predict_state(w["context_state"], w["action"][:, :spec.horizon])
        loss = state_loss(pred, w["future_state"][:, :spec.future], w["future_mask"][:, :spec.future])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.2e}", refresh=False)
    log.info("state head fitted alone for %d steps: loss %.3g", steps, loss.item())
    return loss.item()


def load_weights(model: WorldModel, folder: Path) -> None:
    """``model`` takes the weights of the world model saved in ``folder``, which must have its shapes;
    a U-Net with more input channels (the pose inputs', last) keeps them at zero weight."""
    saved = WorldModel.from_pretrained(folder).state_dict()
    mine = model.state_dict()
    key = "unet.conv_in.weight"
    if key in saved and key in mine and saved[key].shape[1] < mine[key].shape[1] and saved[key].shape[2:] == mine[key].shape[2:]:
        grown = torch.zeros_like(mine[key])
        grown[:, :saved[key].shape[1]] = saved[key]
        saved[key] = grown
    wrong = sorted(k for k in set(saved) | set(mine) if k not in saved or k not in mine or saved[k].shape != mine[k].shape)
    if wrong:
        raise ValueError(f"--init_from {folder}: that world model has other shapes than this one ({', '.join(wrong[:3])}"
                         f"{' ...' if len(wrong) > 3 else ''}); give the same --model settings and a dataset with the same "
                         "views, resolution and action/state dims")
    model.load_state_dict(saved)


def update(model, opt, sched, accelerator, cfg: TrainWorldModelConfig, data, step: int) -> dict:
    """One optimiser step (``grad_accumulation`` micro-batches); returns float metrics."""
    seen = []  # (episode, frame) of each clip, per micro-batch, for --record_batches

    def micro_loss(micro: int):
        batch = next(data)
        seen.append(torch.stack([batch["episode_index"], batch["frame_index"]], 1).tolist())
        batch = to_device(batch, accelerator.device)
        # The diffusion noise of a micro-batch depends only on (seed, step, micro, process): resumable.
        seed = cfg.seed * 1_000_003 + (step * cfg.grad_accumulation + micro) * 131 + accelerator.process_index
        return flow_matching_loss(model, batch, cfg.objective, torch.Generator(accelerator.device).manual_seed(seed))

    metrics = loop.optimizer_step(accelerator, model, opt, sched, cfg, micro_loss)
    loop.record_step(accelerator, cfg, cfg.output_dir, step + 1, seen, model)
    return metrics
