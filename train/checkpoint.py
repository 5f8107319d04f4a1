"""Checkpoints of the training loops (``train.loop``): accelerate's state, the EMA and the EMA model
ready for inference, written atomically; resume from the newest one that reads back; the final
``<output_dir>/model`` swapped in whole.

Nothing is read back from a pickle that could run code: weights and the EMA are safetensors, and
accelerate loads its optimiser, schedule and RNG files with ``weights_only=True``. A crash leaves the
outputs usable: a damaged newest checkpoint is skipped with a warning that names its file, leftovers
of a cut-short write are cleared, and a resumed run drops the metrics of the steps it redoes."""

import json
import logging
import os
import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

EMA_FILE = "ema.safetensors"  # in each checkpoint, beside accelerate's state/


def checkpoint_dir(out: Path, step: int) -> Path:
    """The folder of the run at ``out``'s checkpoint at ``step``."""
    return Path(out) / "checkpoints" / f"step_{step:07d}"


def finished(out: Path, steps: int) -> bool:
    """Whether the run at ``out`` was trained to ``steps``: its checkpoint there and its published model exist."""
    return checkpoint_dir(out, steps).is_dir() and (Path(out) / "model").is_dir()


def save_checkpoint(accelerator, model, ema, out: Path, step: int, keep: int = 3,
                    assets: dict[str, str] | None = None, save_model: Callable | None = None) -> None:
    """accelerate state (model, optimiser, schedule, RNG), the EMA (``save_ema``) and the EMA model
    ready for inference, which then replaces <out>/model (``publish``), with ``assets`` ({file name:
    text}) written beside its weights. ``save_model(model, folder)`` writes the model (default: its
    ``save_pretrained``), for a model that needs more beside its weights to load, such as a lerobot
    policy's processors."""
    ckpt = checkpoint_dir(out, step)
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    # Every process saves the state: each writes its own RNG state (random_states_<rank>.pkl, which
    # a resume loads into that process), the main one the rest (FSDP and DeepSpeed need all of them too).
    accelerator.save_state(str(tmp / "state"), safe_serialization=True)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    model = accelerator.unwrap_model(model)
    save_ema(ema, model, tmp / EMA_FILE)
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    if save_model is None:
        model.save_pretrained(tmp / "model")
    else:
        save_model(model, tmp / "model")
    ema.restore(model.parameters())
    for name, text in (assets or {}).items():
        (tmp / "model" / name).write_text(text)
    (tmp / "step.json").write_text(json.dumps({"step": step}))
    shutil.rmtree(ckpt, ignore_errors=True)
    tmp.rename(ckpt)  # a checkpoint exists only once it is complete
    publish(ckpt / "model", out / "model")
    for old in sorted((out / "checkpoints").glob("step_???????"))[:-keep]:
        shutil.rmtree(old)


def resume(accelerator, out: Path, sched, ema, model) -> int:
    """Loads the newest checkpoint in ``out`` that reads back (accelerate state and the EMA of
    ``model``); returns its step (0 if none). A damaged checkpoint is skipped with a warning naming
    the file; if none reads back, that is an error. The leftovers of a crash go first (temporary
    checkpoints, a cut-short model swap), and metrics.jsonl loses the steps after the one resumed.

    The optimiser's learning rate is re-derived from this run's schedule: a run resumed with more
    ``steps`` than it was started with would otherwise take one step at the old schedule's rate.
    """
    if accelerator.is_main_process:
        clear_leftovers(out)
    accelerator.wait_for_everyone()
    ckpts = sorted((out / "checkpoints").glob("step_???????"), reverse=True) if (out / "checkpoints").exists() else []
    from safetensors import SafetensorError

    failures = []
    for ckpt in ckpts:
        try:
            step = load_checkpoint(accelerator, ckpt, ema, model)
            break
        # what a damaged file raises past check_readable: torch a RuntimeError or an UnpicklingError
        except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError, SafetensorError) as e:
            log.warning("cannot resume from %s: %s", ckpt, e)
            failures.append(f"{ckpt.name}: {e}")
    else:
        if failures:
            raise RuntimeError(f"no checkpoint in {out / 'checkpoints'} reads back ({'; '.join(failures)}); "
                               "move that folder away to train from scratch")
        step = 0
    if accelerator.is_main_process:
        trim_metrics(out / "metrics.jsonl", step)
    if step == 0:
        return 0
    lambda_lr = sched.scheduler  # accelerate wraps the LambdaLR
    for group, base, fn in zip(lambda_lr.optimizer.param_groups, lambda_lr.base_lrs, lambda_lr.lr_lambdas):
        group["lr"] = base * fn(lambda_lr.last_epoch)
    if failures:
        log.warning("resumed from %s, the newest checkpoint that reads back", ckpt)
    else:
        log.info("resumed from %s", ckpt)
    return step


def load_checkpoint(accelerator, ckpt: Path, ema, model) -> int:
    """Loads checkpoint ``ckpt`` into the prepared objects and ``ema``; returns its step."""
    check_readable(ckpt)
    # weights_only: the optimiser and schedule files are torch pickles, read back as plain data only
    accelerator.load_state(str(ckpt / "state"), load_kwargs={"weights_only": True})
    load_ema(ema, model, ckpt / EMA_FILE)
    return json.loads((ckpt / "step.json").read_text())["step"]


def check_readable(folder: Path) -> None:
    """Raises, naming the file, if a file in ``folder`` is cut short: a safetensors header must
    cover its file, and a torch file is a zip archive whose directory is at its end. (accelerate
    would name no file, and skips unreadable RNG states without a word.)"""
    from safetensors import safe_open

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt"):
                    pass
            elif path.suffix in (".bin", ".pkl", ".pt"):
                zipfile.ZipFile(path).close()
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as e:
            raise ValueError(f"{path} cannot be read ({e})") from e


def save_ema(ema, model, path: Path) -> None:
    """The EMA's weights, named as ``model``'s parameters, and its counters (as metadata) in one
    safetensors file. (accelerate's ``register_for_checkpointing`` would pickle them.)"""
    from safetensors.torch import save_file

    state = ema.state_dict()
    names = [name for name, _ in model.named_parameters()]
    shadow = state.pop("shadow_params")
    assert len(names) == len(shadow), f"EMA of {len(shadow)} tensors for a model of {len(names)} parameters"
    save_file({n: p.detach().cpu().contiguous() for n, p in zip(names, shadow)}, str(path),
              metadata={"ema": json.dumps(state)})


def load_ema(ema, model, path: Path) -> None:
    """``ema`` takes the state ``save_ema`` wrote for ``model`` (on the CPU; ``ema.to`` moves it)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        names = [name for name, _ in model.named_parameters()]
        if missing := sorted(set(names) - set(f.keys())):
            raise ValueError(f"{path} holds no EMA of {missing[:3]}: written for another model")
        metadata = f.metadata() or {}
        if "ema" not in metadata:
            raise ValueError(f"{path} has no 'ema' metadata: not written by train.checkpoint.save_ema")
        state = json.loads(metadata["ema"])
        state["shadow_params"] = [f.get_tensor(n) for n in names]
    ema.load_state_dict(state)


def clear_leftovers(out: Path) -> None:
    """Removes what a crash leaves: temporary checkpoints, and of a cut-short ``publish`` the new
    copy, putting the old model back if it was already moved aside."""
    for tmp in (out / "checkpoints").glob("step_*.tmp"):
        log.info("removing %s, a checkpoint cut short", tmp)
        shutil.rmtree(tmp)
    final = out / "model"
    shutil.rmtree(final.with_name(final.name + ".tmp"), ignore_errors=True)
    old = final.with_name(final.name + ".old")
    if old.exists() and not final.exists():
        old.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def publish(src: Path, final: Path) -> None:
    """Replaces folder ``final`` by a copy of ``src`` so that a complete model is always on disk: the
    copy is written beside it and renamed in; a crash between the renames leaves the old model as
    ``<final>.old``, which ``clear_leftovers`` puts back."""
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def same_files(a: Path, b: Path) -> bool:
    """Whether folders ``a`` and ``b`` hold files of the same names and sizes."""
    def sizes(folder):
        return {p.relative_to(folder): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    return a.is_dir() and b.is_dir() and sizes(a) == sizes(b)


def trim_metrics(path: Path, step: int) -> None:
    """Drops the records of the steps after ``step`` (a resumed run logs them again) and a last line cut
    short by a crash, rewriting the file atomically."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    keep = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            log.warning("%s: dropping a line cut short: %r", path, line[:80])
    if len(keep) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
