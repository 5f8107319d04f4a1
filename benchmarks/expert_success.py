"""Scripted-expert success at zero noise, and the failure fraction under a failure mix.

    python -m benchmarks.expert_success --seeds 50

Physics only (no rendering): success is read from the simulator. Episode i uses seed 10_000 + i,
seeds never used by the default collection.
"""

import argparse

import numpy as np

from benchmarks._report import command, write_section
from data.collect import run_episode
from simulator.physics import TASKS, ExpertConfig, PhysicsEnv, PhysicsEnvConfig, ScriptedExpert


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def run(task: str, expert_cfg: ExpertConfig, seeds: int) -> list[dict]:
    env = PhysicsEnv(PhysicsEnvConfig(task=task, views=(), terminate_on_success=False))
    expert = ScriptedExpert(env.spec, expert_cfg)
    labels = [run_episode(env, expert, 10_000 + i, hold_steps=5)[1] for i in range(seeds)]
    env.close()
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--mix", type=float, default=0.3, help="total failure probability, split over 3 modes")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    mix = {m: args.mix / 3 for m in ("early_release", "wrong_target", "stall")}
    rows = ["| task | expert, zero noise: success (95% CI) | with a failure mix of {:.0%}: failed episodes (95% CI) | "
            "failed / injected | mean steps to success |".format(args.mix), "|---|---|---|---|---|"]
    for task in args.tasks:
        clean = run(task, ExpertConfig(), args.seeds)
        mixed = run(task, ExpertConfig(failure_mix=mix), args.seeds)
        k = sum(e["success"] for e in clean)
        f = sum(not e["success"] for e in mixed)
        injected = sum(e["failure_mode"] != "none" for e in mixed)
        failed_injected = sum(not e["success"] for e in mixed if e["failure_mode"] != "none")
        lo, hi = wilson(k, args.seeds)
        flo, fhi = wilson(f, args.seeds)
        steps = np.mean([e["length"] - 5 for e in clean])  # minus the 5 hold steps after success
        row = (f"| {task} | {k}/{args.seeds} = {k / args.seeds:.0%} ({lo:.0%}-{hi:.0%}) | {f}/{args.seeds} = "
               f"{f / args.seeds:.0%} ({flo:.0%}-{fhi:.0%}) | {failed_injected}/{injected} | {steps:.0f} |")
        print(row, flush=True)
        rows.append(row)
    body = "\n".join(rows) + (
        "\n\nA failure mode is injected per episode (early release, wrong target, stall: equal shares); "
        "'failed / injected' shows how reliably an injected mode makes the episode fail in physics.")
    if not args.no_write:
        write_section("Scripted experts", command(), body)


if __name__ == "__main__":
    main()
