"""Collection throughput: env steps per second on one core, with two 64x64 views rendered.

    python -m benchmarks.collect_throughput

Pins itself to one CPU core (os.sched_setaffinity), so figures are per core. Measures, side by
side in one run, with the scripted expert acting:
  physics only (no rendering), physics + 2 views ("fast" and "full" render quality),
  and reverie-collect end to end (rendering, H.264 encoding, parquet writing, start-up).
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._report import command, write_section
from data.collect import CollectConfig, collect, run_episode
from data.video import quiet_libav
from simulator.physics import ExpertConfig, PhysicsEnv, PhysicsEnvConfig, ScriptedExpert


def env_steps_per_s(task: str, views: tuple[str, ...], quality: str, episodes: int, size: int) -> float:
    env = PhysicsEnv(PhysicsEnvConfig(task=task, views=views, render_quality=quality, height=size, width=size,
                                      terminate_on_success=False))
    expert = ScriptedExpert(env.spec, ExpertConfig())
    run_episode(env, expert, 0, hold_steps=0)  # warm-up: numba JIT in robosuite, GL context
    steps, t0 = 0, time.perf_counter()
    for i in range(episodes):
        steps += run_episode(env, expert, 100 + i, hold_steps=10)[1]["length"]
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def collect_steps_per_s(task: str, episodes: int, size: int) -> float:
    root = Path(tempfile.mkdtemp()) / "ds"
    try:
        cfg = CollectConfig(task=task, episodes=episodes, root=root, height=size, width=size,
                            expert=ExpertConfig(), commit_every=episodes)
        t0 = time.perf_counter()
        collect(cfg)
        elapsed = time.perf_counter() - t0
        import json

        frames = json.loads((root / "meta" / "info.json").read_text())["total_frames"]
        return frames / elapsed
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["lift", "stack", "pick_place_can"])
    parser.add_argument("--episodes", type=int, default=5, help="episodes per env-throughput measurement")
    parser.add_argument("--collect-episodes", type=int, default=20, help="episodes of the end-to-end collection")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    quiet_libav()
    rows = ["| task | physics only | + 2 views, fast render | + 2 views, full render | fast / full | "
            "reverie-collect end to end (fast, H.264, parquet) |", "|---|---|---|---|---|---|"]
    for task in args.tasks:
        phys = env_steps_per_s(task, (), "fast", args.episodes, args.size)
        fast = env_steps_per_s(task, ("front", "wrist"), "fast", args.episodes, args.size)
        full = env_steps_per_s(task, ("front", "wrist"), "full", args.episodes, args.size)
        coll = collect_steps_per_s(task, args.collect_episodes, args.size)
        row = f"| {task} | {phys:.0f} | {fast:.0f} | {full:.0f} | {fast / full:.1f}x | {coll:.0f} |"
        print(row, flush=True)
        rows.append(row)
    body = (f"Env steps per second on one core (20 Hz control, {args.size}x{args.size} views, scripted expert; "
            f"{args.episodes} episodes per env measurement, {args.collect_episodes} for the end-to-end collection). "
            "Target for Lift: >= 40 steps/s with two views rendered.\n\n" + "\n".join(rows) + "\n\n"
            "The end-to-end figure includes start-up (imports, building the robosuite model: ~5 s) and lerobot's "
            "per-episode writing (~0.6 s an episode, profiled: parquet through `datasets`, episode statistics, PNG "
            "staging of frames, H.264 encoding), which weighs most on short episodes (Lift: ~55 steps). "
            "lerobot's streaming encoder (no PNG staging) saved only ~5% here, so it is not used.")
    if not args.no_write:
        write_section("Collection throughput", command(), body)


if __name__ == "__main__":
    main()
