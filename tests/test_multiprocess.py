"""Multi-process (DDP) training: ``reverie-train world_model|progress|policy`` under two processes.

The processes run on the CPU with the gloo backend, launched as on GPUs but with
``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2``: ``accelerate launch --cpu
--num_processes 2`` starts one process only (accelerate runs several CPU processes through mpirun).
With ``--record_batches`` each process writes, per step, the samples it trained on and a hash of its
weights after the step (``train.loop.record_step``); from those records the tests check that the
processes trained on different samples, kept identical weights, and resumed together from the
checkpoint. Kept small: tiny models, 4 steps, one thread per process.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil  # accelerate's own dependency
import pytest
import torch

# Each kind at the tiny sizes of its own tests (tests/test_train_world_model.py,
# tests/progress/test_progress_model.py, tests/policy/test_train_policy.py).
TINY = {
    "world_model": {"batch_size": 2, "frame_stride": 2, "model.context": 2, "model.horizon": 4,
                    "model.block_out_channels": "[16, 32]", "model.norm_num_groups": 8, "model.cond_dim": 32,
                    "model.layers_per_block": 1, "second_cycle": 0},
    "progress": {"batch_size": 4, "model.history": 2, "model.history_stride": 2, "model.channels": "[8, 16]",
                 "model.norm_num_groups": 4, "model.pool_size": 2, "model.width": 32, "model.task_buckets": 64,
                 "model.ensemble": 3, "model.head_width": 16},
    "policy": {"batch_size": 4, "policy.channels": "[8, 8]", "policy.width": 32, "policy.depth": 1, "policy.heads": 2},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(kind: str, dataset: Path, out: Path, steps: int, checkpoint_every: int = 2) -> list[str]:
    """``accelerate launch`` of ``reverie-train kind`` on 2 processes, recording their batches."""
    options = {"dataset.root": dataset, "dataset.val_episodes": 1, "output_dir": out, "steps": steps,
               "checkpoint_every": checkpoint_every, "log_every": 1, "warmup_steps": 1, "record_batches": "true",
               **TINY[kind]}
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", "train.cli", kind,
            *[x for k, v in options.items() for x in (f"--{k}", str(v))]]


def environment() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}


def launch(kind: str, dataset: Path, out: Path, steps: int) -> None:
    run = subprocess.run(command(kind, dataset, out, steps), env=environment(), capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-4000:]


def records(out: Path) -> list[list[dict]]:
    """Each process's records (``train.loop.record_step``), process 0 first."""
    files = sorted((out / "batches").glob("process_*.jsonl"))
    assert [f.name for f in files] == ["process_0.jsonl", "process_1.jsonl"], "not two processes"
    return [[json.loads(line) for line in f.read_text().splitlines()] for f in files]


@pytest.mark.parametrize("kind", list(TINY))
def test_two_processes_train_on_different_samples_keep_equal_weights_and_resume(kind, tiny_dataset, tmp_path):
    out = tmp_path / kind
    launch(kind, tiny_dataset, out, steps=2)
    launch(kind, tiny_dataset, out, steps=4)  # both processes resume from the step-2 checkpoint
    first, second = records(out)
    assert [r["step"] for r in first] == [r["step"] for r in second] == [1, 2, 3, 4]  # not 1, 2, 1, 2, 3, 4
    assert [r["weights"] for r in first] == [r["weights"] for r in second]  # DDP kept them equal ...
    assert len({r["weights"] for r in first}) == 4  # ... while they changed from step to step
    # a sample is [episode, frame] (world model, progress) or a row of the policy's frame table
    samples = [[[str(s) for batch in r["samples"] for s in batch] for r in rank] for rank in (first, second)]
    if kind == "progress":  # samples drawn with replacement, from a generator of (seed, step, process)
        assert all(a != b for a, b in zip(*samples))
    else:  # one shuffled epoch split between the processes: no sample twice in 4 steps, resumed or not
        seen = [s for rank in samples for step in rank for s in step]
        assert len(seen) == 2 * 4 * TINY[kind]["batch_size"] and len(set(seen)) == len(seen)
    metrics = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics == [1, 2, 3, 4]
    state = out / "checkpoints" / "step_0000004" / "state"
    # Each process's RNG state is in the checkpoint (lerobot's diffusion policy draws its noise from it).
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()
    # The learning-rate schedule counted optimiser steps (accelerate would count 2 per step, one per process).
    assert torch.load(state / "scheduler.bin", weights_only=True)["last_epoch"] == 4
    assert (out / "model" / "config.json").is_file()


def rank_of(process) -> str | None:
    try:
        return process.environ().get("RANK")
    except psutil.Error:  # a process that ended meanwhile
        return None


def test_a_stop_signal_to_one_process_stops_both_after_the_same_step(tiny_dataset, tmp_path):
    out, started = tmp_path / "policy", tmp_path / "policy" / "batches" / "process_1.jsonl"
    launcher = subprocess.Popen(command("policy", tiny_dataset, out, steps=100_000, checkpoint_every=100_000),
                                env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (started.is_file() and started.read_text()):
            assert launcher.poll() is None and time.monotonic() < deadline, "the training did not start"
            time.sleep(0.2)
        workers = [p for p in psutil.Process(launcher.pid).children(recursive=True) if rank_of(p) == "1"]
        assert len(workers) == 1
        workers[0].send_signal(signal.SIGTERM)  # as a scheduler's preemption that reaches one process first
        _, stderr = launcher.communicate(timeout=120)
    finally:  # what is left of a training that hangs (torchrun starts each process in a session of its own)
        if launcher.poll() is None:
            for process in [*psutil.Process(launcher.pid).children(recursive=True), launcher]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
    assert "stopped at step" in stderr, stderr[-4000:]
    first, second = records(out)
    assert len(first) == len(second) and first[-1]["weights"] == second[-1]["weights"]
    checkpoints = [p.name for p in (out / "checkpoints").iterdir()]
    assert checkpoints == [f"step_{first[-1]['step']:07d}"]  # both stopped after that step and saved it


def test_processes_that_accelerate_does_not_join_are_refused(monkeypatch, tmp_path):
    # What each process of `accelerate launch --multi_gpu --num_processes 2` sees on a machine without
    # GPUs when ACCELERATE_USE_CPU is not set: torchrun's WORLD_SIZE=2, and an accelerator that trains it
    # alone. Each would train on its own, all writing to one output folder.
    from data.clips import DatasetConfig
    from train.loop import make_accelerator
    from train.world_model import TrainWorldModelConfig

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    cfg = TrainWorldModelConfig(dataset=DatasetConfig(root="unused"), output_dir=tmp_path)
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2 launched together.*ACCELERATE_USE_CPU=1"):
        make_accelerator(cfg)
