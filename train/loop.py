"""What every training loop here shares: the accelerator, EMA, AdamW and cosine schedule, one
optimiser step over gradient-accumulation micro-batches, a Ctrl-C/SIGTERM stop that checkpoints
first (agreed by every process), and metrics.jsonl with the accumulated training time. Checkpoints,
resume and the final model are ``train.checkpoint``'s. Used by train.world_model, train.progress and
train.policy, whose configs extend ``LoopConfig``."""

import json
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from train.checkpoint import checkpoint_dir, publish, resume, same_files, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """The loop settings every training config has (each training sets its own defaults)."""

    steps: int = 1000  # optimiser steps in all (a resumed run goes on to this many)
    batch_size: int = 16  # samples per optimiser step and process, before accumulation
    grad_accumulation: int = 1  # micro-batches per optimiser step
    lr: float = 3e-4  # peak learning rate (AdamW), after warm-up, then a cosine decay to 0
    weight_decay: float = 1e-2  # AdamW's
    warmup_steps: int = 100  # linear learning-rate warm-up
    grad_clip: float = 1.0  # the gradient norm is clipped to this
    ema_decay: float = 0.999  # of the weights' exponential moving average, which is what is saved
    mixed_precision: str = "no"  # no | bf16
    checkpoint_every: int = 500  # steps between checkpoints (a run resumes from the latest)
    keep_checkpoints: int = 3  # older checkpoints are deleted (each holds weights, optimiser state and EMA)
    log_every: int = 25  # steps between metrics.jsonl lines
    seed: int = 0  # of the weights' initialisation and the batches' order
    # Each process appends, per step, the samples it trained on and a hash of its weights to
    # <output_dir>/batches/process_<rank>.jsonl (``record_step``): what each process saw, and that they stay in sync.
    record_batches: bool = False

    def __post_init__(self):
        """Clear errors for bad loop settings."""
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision=}")
        for name in ("steps", "batch_size", "grad_accumulation", "checkpoint_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)=}")


def make_accelerator(cfg):
    """The accelerator (bf16, gradient accumulation, TensorBoard in ``cfg.output_dir``), seeded."""
    from accelerate import Accelerator
    from accelerate.utils import get_int_from_env, set_seed

    # step_scheduler_with_optimizer=False: the schedule counts optimiser steps (optimizer_step steps it);
    # accelerate would step it once per process, so that N processes ran through it N times as fast.
    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accumulation, mixed_precision=cfg.mixed_precision,
                              log_with="tensorboard", project_dir=str(cfg.output_dir),
                              step_scheduler_with_optimizer=False)
    # torchrun's and MPI's variables, read as accelerate reads them
    launched = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)
    if launched > 1 and accelerator.num_processes == 1:  # e.g. accelerate launch --multi_gpu without GPUs
        raise RuntimeError(f"this process is one of WORLD_SIZE={launched} launched together, but accelerate trains it "
                           f"alone: each would train on its own, all writing to {cfg.output_dir}. Without GPUs, launch "
                           f"with ACCELERATE_USE_CPU=1 (ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
                           f"--num_processes {launched} ...)")
    set_seed(cfg.seed)
    return accelerator


def prepare(accelerator, cfg, model, record: dict, tracker: str):
    """EMA, AdamW and a cosine schedule for ``model``, prepared and resumed from the newest
    checkpoint in ``cfg.output_dir``; a fresh run writes ``record`` to train_config.json.
    Returns (model, ema, opt, sched, step); TensorBoard logs go to <output_dir>/<tracker>."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    out = cfg.output_dir
    ema = EMAModel(model.parameters(), decay=cfg.ema_decay, model_cls=type(model), model_config=model.config)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, cfg.warmup_steps, cfg.steps)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    step = resume(accelerator, out, sched, ema, accelerator.unwrap_model(model))
    ema.to(accelerator.device)
    if step == 0 and accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(record, indent=2, default=str))
    accelerator.init_trackers(tracker)
    return model, ema, opt, sched, step


def optimizer_step(accelerator, model, opt, sched, cfg, micro_loss) -> dict:
    """One optimiser step over ``cfg.grad_accumulation`` micro-batches; ``micro_loss(micro)`` gives
    (loss, metrics) of one. Returns the metrics averaged over the micro-batches, with grad_norm."""
    totals: dict[str, float] = {}
    for micro in range(cfg.grad_accumulation):
        with accelerator.accumulate(model), accelerator.autocast():
            loss, metrics = micro_loss(micro)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                metrics["grad_norm"] = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if accelerator.sync_gradients:  # the last micro-batch: the optimiser stepped
                sched.step()
            opt.zero_grad(set_to_none=True)
        for k, v in metrics.items():
            totals[k] = totals.get(k, 0.0) + float(v) / cfg.grad_accumulation
    return totals


class StopRequest:
    """Ctrl-C / SIGTERM finish the current step, checkpoint and stop."""

    def __init__(self):
        self.requested = False  # a signal reached this process
        self.agreed = False  # every process stops after this step

    def agree(self, accelerator) -> bool:
        """Whether any process was asked to stop; then all stop after this same step. Each process gets
        a signal at its own moment, and one that stopped alone would wait for the others forever."""
        if accelerator.num_processes == 1:
            self.agreed = self.requested
        else:
            flag = torch.tensor([float(self.requested)], device=accelerator.device)
            self.agreed = bool(accelerator.reduce(flag, "max").item())
        return self.agreed

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)


def training_time(out: Path) -> float:
    """Seconds of training logged by earlier runs in ``out`` (0 for a fresh run)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0.0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]).get("time_s", 0.0) if lines else 0.0


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def append_jsonl(path: Path, record: dict, accelerator) -> None:
    if accelerator.is_main_process:
        with path.open("a") as f:
            f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                                for k, v in record.items()}) + "\n")


def record_step(accelerator, cfg, out: Path, step: int, samples: list[list], model) -> None:
    """With ``cfg.record_batches``: appends to <out>/batches/process_<rank>.jsonl this process's
    ``samples`` of optimiser step ``step`` (one list of sample ids per micro-batch) and a SHA-256 of
    its weights after the step, which data-parallel processes must share."""
    if not cfg.record_batches:
        return
    import hashlib

    digest = hashlib.sha256()
    for p in accelerator.unwrap_model(model).parameters():
        digest.update(p.detach().cpu().flatten().view(torch.uint8).numpy().tobytes())
    path = out / "batches" / f"process_{accelerator.process_index}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"step": step, "samples": samples, "weights": digest.hexdigest()}) + "\n")


def run(accelerator, model, ema, opt, sched, cfg, out: Path, step: int, train_step, desc: str,
        assets: dict[str, str] | None = None, save_model: Callable | None = None) -> Path:
    """The loop both trainings share, from ``step`` to ``cfg.steps``: ``train_step(step)`` makes one
    optimiser step and returns float metrics; the EMA follows, metrics are logged every
    ``cfg.log_every`` steps (with the accumulated training time) and a checkpoint is written every
    ``cfg.checkpoint_every`` steps, at the end, and on Ctrl-C/SIGTERM (then KeyboardInterrupt).
    ``assets`` are saved with every model, which ``save_model`` writes (``save_checkpoint``).
    Returns the folder of the final EMA model."""
    from tqdm import tqdm

    stop = StopRequest()
    clock = time.perf_counter() - training_time(out)  # time_s in metrics.jsonl adds up over resumed runs
    bar = tqdm(total=cfg.steps, initial=step, desc=desc, disable=not accelerator.is_main_process)
    with stop:
        while step < cfg.steps and not stop.agreed:
            metrics = train_step(step)
            ema.step(accelerator.unwrap_model(model).parameters())
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                accelerator.log(metrics | {"lr": sched.get_last_lr()[0]}, step=step)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                record = {"step": step, **metrics, "time_s": round(time.perf_counter() - clock, 1)}
                append_jsonl(out / "metrics.jsonl", record, accelerator)
            stopping = stop.agree(accelerator)  # every step, on every process
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping:
                save_checkpoint(accelerator, model, ema, out, step, cfg.keep_checkpoints, assets, save_model)
    bar.close()
    accelerator.end_training()
    last = checkpoint_dir(out, step) / "model"
    if accelerator.is_main_process and last.is_dir() and not same_files(last, out / "model"):
        # a run that had nothing left to train, whose model a crash or a hand removed
        log.warning("%s is missing or incomplete: copying it from %s", out / "model", last)
        publish(last, out / "model")
    if stop.agreed:
        log.warning("stopped at step %d; run the same command to resume", step)
        raise KeyboardInterrupt
    return out / "model"
