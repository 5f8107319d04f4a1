"""What every training loop here shares: atomic checkpoints of accelerate state plus an EMA model
ready for inference, exact resume, a Ctrl-C/SIGTERM stop that checkpoints first, and metrics.jsonl
with the accumulated training time. Used by train.world_model and train.progress."""

import json
import logging
import math
import shutil
import signal
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def save_checkpoint(accelerator, model, ema, out: Path, step: int, keep: int = 3) -> None:
    """accelerate state (model, optimiser, schedule, EMA, RNG) + the EMA model ready for inference."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    ckpt = out / "checkpoints" / f"step_{step:07d}"
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp / "state"))
    model = accelerator.unwrap_model(model)
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    model.save_pretrained(tmp / "model")
    ema.restore(model.parameters())
    (tmp / "step.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)  # a checkpoint exists only once it is complete
    final = out / "model"
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(ckpt / "model", final)
    for old in sorted((out / "checkpoints").glob("step_???????"))[:-keep]:
        shutil.rmtree(old)


def resume(accelerator, out: Path, sched) -> int:
    """Loads the newest complete checkpoint in ``out``; returns its step (0 if none).

    The optimiser's learning rate is re-derived from this run's schedule: a run resumed with more
    ``steps`` than it was started with would otherwise take one step at the old schedule's rate.
    """
    ckpts = sorted((out / "checkpoints").glob("step_???????")) if (out / "checkpoints").exists() else []
    if not ckpts:
        return 0
    accelerator.load_state(str(ckpts[-1] / "state"))
    step = json.loads((ckpts[-1] / "step.json").read_text())["step"]
    lambda_lr = sched.scheduler  # accelerate wraps the LambdaLR
    for group, base, fn in zip(lambda_lr.optimizer.param_groups, lambda_lr.base_lrs, lambda_lr.lr_lambdas):
        group["lr"] = base * fn(lambda_lr.last_epoch)
    log.info("resumed from %s", ckpts[-1])
    return step


class StopRequest:
    """Ctrl-C / SIGTERM finish the current step, checkpoint and stop."""

    def __init__(self):
        self.requested = False

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
