"""Choosing a world model on one half of the paired starts, scoring it on the other.

    python -m benchmarks.model_selection A=outputs/family/eval_a/policy_eval.json B=... [--no-write]

A world model picked as the best of several on the family it is then scored on carries the luck of
the pick in its figures (issue 21: the 3000 + 600-step model was the best of five on the learned
family, and a clean run of its recipe did not reproduce it). Given ``reverie-eval policy`` results
of one policy family in several world models (``benchmarks/learned_family.py`` writes them), this
splits the paired starts into two halves, the first for choosing and the second for scoring:
each model's family figures on each half, the model the first half picks (lowest MMRV, then
highest Spearman), and its figures on the second half. Models meant as seeds of one recipe are
given as ``recipe/seedN=path``: their spread is then reported per recipe. Nothing is re-run.
"""

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks._report import command, write_section
from eval.success import mmrv, pearson, spearman

METRICS = ("pearson", "spearman", "mmrv", "mean_abs_gap")


def family_figures(saved: dict, episodes: slice) -> dict:
    """Pearson, Spearman, MMRV and mean |gap| of the family in ``saved`` (a policy_eval.json) on the
    paired starts ``episodes``."""
    rates = defaultdict(list)
    for run in saved["runs"].values():
        n = len(run["physics"]["success"])  # imagined-only episodes past n are not paired
        for kind in ("imagined", "physics"):
            outcome = run[kind]["success"][:n][episodes]
            rates[kind].append(sum(outcome) / len(outcome))
    s, r = rates["imagined"], rates["physics"]
    return {"pearson": pearson(s, r), "spearman": spearman(s, r), "mmrv": mmrv(s, r),
            "mean_abs_gap": float(np.mean(np.abs(np.subtract(s, r))))}  # as PolicyComparison.summary


def row(name: str, figures: dict) -> str:
    return f"| {name} | " + " | ".join(f"{figures[k]:.2f}" if k != "mmrv" else f"{figures[k]:.3f}" for k in METRICS) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evals", nargs="+", help="NAME=policy_eval.json, one per world model (recipe/seedN=... for seeds)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    saved = {}
    for item in args.evals:
        name, eq, path = item.partition("=")
        if not eq or not Path(path).is_file():
            parser.error(f"give NAME=policy_eval.json with an existing file, got {item!r}")
        saved[name] = json.loads(Path(path).read_text())
    n = min(len(next(iter(s["runs"].values()))["physics"]["success"]) for s in saved.values())
    halves = {"choose (starts 1-%d)" % (n // 2): slice(0, n // 2), "score (starts %d-%d)" % (n // 2 + 1, n): slice(n // 2, n)}
    figures = {name: {half: family_figures(s, episodes) for half, episodes in halves.items()} for name, s in saved.items()}
    header = "| world model | Pearson | Spearman | MMRV | mean \\|gap\\| |\n|---|---|---|---|---|"
    parts = []
    for half in halves:
        parts.append(f"**{half}**\n\n{header}\n" + "\n".join(row(name, f[half]) for name, f in figures.items()))
    choose, score = halves
    picked = min(figures, key=lambda m: (figures[m][choose]["mmrv"], -figures[m][choose]["spearman"]))
    parts.append(f"The first half picks **{picked}**; on the second half it scores "
                 + ", ".join(f"{k} {figures[picked][score][k]:.3f}" for k in METRICS) + ".")
    recipes = defaultdict(list)
    for name in figures:
        if "/" in name:
            recipes[name.split("/")[0]].append(name)
    for recipe, members in recipes.items():
        if len(members) > 1:
            spread = {k: [figures[m][score][k] for m in members] for k in METRICS}
            parts.append(f"Recipe **{recipe}**, {len(members)} trainings, on the second half: " + ", ".join(
                f"{k} {statistics.mean(v):.2f} (range {min(v):.2f} to {max(v):.2f})" for k, v in spread.items()) + ".")
    body = "\n\n".join(parts)
    print(body)
    if not args.no_write:
        write_section("World model selection on half the starts", command(),
                      f"{len(saved)} world models, each with one family of {len(next(iter(saved.values()))['runs'])} "
                      f"policies over {n} paired starts.\n\n" + body)


if __name__ == "__main__":
    main()
