"""Coverage and width of the prediction-powered success estimate (``eval.ppi``) against real-only
evaluation, from an evaluation that ran every policy from the same starts in both simulators.

    python -m benchmarks.ppi_coverage --results outputs/policy_eval/policy_eval.json --paired 20 40

For each policy of ``policy_eval.json`` (``reverie-eval policy``, E paired episodes each) and each
n: many times, n of the E starts are drawn as the "real" episodes (physics outcome and imagined
outcome), the other E - n count as imagined-only; the interval of ``ppi_success`` and the Wilson
interval of the n physics outcomes alone are checked against the policy's physics success over
all E starts (the best estimate of its real rate there is). Coverage is the share of draws whose
interval holds it; width the mean interval width. Draws without replacement from E starts make
both intervals a little conservative.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks._report import command, write_section
from eval.ppi import ppi_success
from eval.success import wilson_interval


def coverage(physics: np.ndarray, imagined: np.ndarray, n: int, draws: int, rng: np.random.Generator) -> dict:
    """Coverage and mean width of the PPI and the real-only intervals over ``draws`` draws."""
    truth, E = physics.mean(), len(physics)
    hits = {"ppi": 0, "real": 0}
    width = {"ppi": 0.0, "real": 0.0}
    for _ in range(draws):
        order = rng.permutation(E)
        paired, rest = order[:n], order[n:]
        est = ppi_success(physics[paired], imagined[paired], imagined[rest])
        real = wilson_interval(int(physics[paired].sum()), n)
        for name, (lo, hi) in (("ppi", est.interval), ("real", real)):
            hits[name] += lo <= truth <= hi
            width[name] += (hi - lo) / draws
    return {"truth": truth, "coverage_ppi": hits["ppi"] / draws, "width_ppi": width["ppi"],
            "coverage_real": hits["real"] / draws, "width_real": width["real"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True, help="policy_eval.json of reverie-eval policy")
    parser.add_argument("--paired", type=int, nargs="+", default=[20, 40], help="numbers n of real episodes")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    data = json.loads(args.results.read_text())
    rng = np.random.default_rng(args.seed)
    rows = ["| policy | physics (all E) | imagined | n | coverage PPI | width PPI | coverage real-only | width real-only |",
            "|---|---|---|---|---|---|---|---|"]
    totals: dict[int, list] = {n: [] for n in args.paired}
    for name, run in data["runs"].items():
        physics = np.asarray(run["physics"]["success"], dtype=bool)
        imagined = np.asarray(run["imagined"]["success"], dtype=bool)
        for n in args.paired:
            if n >= len(physics) - 1:
                raise SystemExit(f"--paired {n} leaves no imagined-only starts of {name}'s {len(physics)}")
            c = coverage(physics, imagined, n, args.draws, rng)
            totals[n].append(c)
            rows.append(f"| {name} | {c['truth']:.2f} | {imagined.mean():.2f} | {n} | {c['coverage_ppi']:.3f} | "
                        f"{c['width_ppi']:.3f} | {c['coverage_real']:.3f} | {c['width_real']:.3f} |")
    for n, cs in totals.items():
        rows.append(f"| **mean** | | | {n} | {np.mean([c['coverage_ppi'] for c in cs]):.3f} | "
                    f"{np.mean([c['width_ppi'] for c in cs]):.3f} | {np.mean([c['coverage_real'] for c in cs]):.3f} | "
                    f"{np.mean([c['width_real'] for c in cs]):.3f} |")
    table = "\n".join(rows)
    print(table)
    if not args.no_write:
        config = data["config"]
        write_section("Bias-corrected evaluation: PPI coverage", command(), "\n\n".join([
            f"Results: `{args.results}` ({len(data['runs'])} policies, {config['episodes']} paired episodes each, "
            f"world model `{config['world_model']}`). {args.draws} draws per policy and n.", table]))


if __name__ == "__main__":
    main()
