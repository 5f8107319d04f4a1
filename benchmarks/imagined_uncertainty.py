"""Does the world model's uncertainty tell which imagined successes physics calls failures?

    python -m benchmarks.imagined_uncertainty --policy outputs/policy/model \\
        --world-model outputs/world_model/model --progress outputs/progress/model --episodes 100

RL in imagination learns from imagined outcomes; where imagination calls an episode solved that
physics would fail, it teaches the policy the wrong thing (docs/benchmarks.md: closed loop, the
base policy's imagined and physics outcomes agree with phi 0.00). The imagined env can truncate an
episode as a failure once the world model's spread over ``num_samples`` samples of a chunk passes
``uncertainty_limit``. This script asks whether that helps: the policy runs N episodes in physics
and N in imagination from the same starts (``eval.rl.physics_and_imagined``), the imagined ones
with several samples per chunk and no limit, each recording its peak uncertainty; every limit L is
then applied afterwards (``eval.rl.under_uncertainty_limit``, tested to match the env that
truncates). Reported per limit: imagined success, its precision (the share of imagined successes
that physics solves too; physics' own success rate is what chance gives) and the per-episode phi.
Also: the AUROC with which the peak uncertainty of an imagined success tells a physics failure.
"""

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks._report import DOC, command, write_section
from eval.policy import EpisodeResults
from eval.rl import physics_and_imagined, under_uncertainty_limit
from eval.success import agreement
from eval.success import wilson_interval
from eval.value import success_auroc


def rows(physics: EpisodeResults, imagined: EpisodeResults, limits: list[float]) -> list[dict]:
    """One row per limit: imagined success, precision against physics, agreement (phi)."""
    out = []
    for limit in limits:
        success = under_uncertainty_limit(imagined, limit)
        both = sum(p and i for p, i in zip(physics.success, success))
        a = agreement(physics.success, success)
        out.append({"limit": limit, "imagined": sum(success) / len(success), "solved": sum(success),
                    "precision": both / sum(success) if any(success) else float("nan"), "phi": a["phi"],
                    "phi_ci95": a["phi_ci95"]})
    return out


def default_limits(imagined: EpisodeResults, levels: int = 8) -> list[float]:
    """No limit, then limits at quantiles of the solved imagined episodes' peak uncertainty."""
    solved = torch.tensor([p for s, p in zip(imagined.success, imagined.peak_uncertainty) if s])
    if len(solved) == 0:
        return [math.inf]
    qs = torch.linspace(1.0, 0.0, levels + 1)[1:-1]
    return [math.inf] + sorted({float(torch.quantile(solved, q)) for q in qs}, reverse=True)


def plot(table: list[dict], physics_rate: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r for r in table if math.isfinite(r["limit"])]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = [r["limit"] for r in finite]
    for key, label in (("imagined", "imagined success"), ("precision", "physics success of imagined successes"),
                       ("phi", "per-episode phi")):
        ax.plot(x, [r[key] for r in finite], "o-", label=label)
        ax.axhline(table[0][key], ls=":", color=ax.lines[-1].get_color(), lw=1)  # no limit
    ax.axhline(physics_rate, color="k", lw=1, label="physics success (chance precision)")
    ax.set(xlabel="uncertainty limit (world-model spread; dotted: no limit)", ylabel="rate / correlation",
           title="imagined outcomes under an uncertainty limit")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from policy import camera_views, load_policy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--world-model", type=Path, required=True)
    parser.add_argument("--progress", type=Path, required=True)
    parser.add_argument("--task", default="lift")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=100_000, help="physics seed of start 0 (as reverie-rl evaluates)")
    parser.add_argument("--num-samples", type=int, default=2, help="world-model samples per chunk")
    parser.add_argument("--sampling-steps", type=int, default=2, help="world-model denoising steps (>= 2 for a spread)")
    parser.add_argument("--physics-results", type=Path, default=None,
                        help="reuse the physics episodes of an evaluation with the same policy, seed and episodes "
                             "(a reverie-rl eval_before.json)")
    parser.add_argument("--reuse", action="store_true",
                        help="re-score the episodes an earlier run saved in --output-dir instead of running them")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/imagined_uncertainty"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.num_samples < 2 or args.sampling_steps < 2:
        parser.error("the uncertainty is the spread of >= 2 samples, each of >= 2 sampling steps")

    saved = args.output_dir / "episodes.json"
    if args.reuse:
        if not saved.is_file():
            parser.error(f"--reuse: {saved} does not exist; run once without --reuse")
        episodes = {k: EpisodeResults(**v) for k, v in json.loads(saved.read_text()).items()}
        return report(args, episodes["physics"], episodes["imagined"])
    policy = load_policy(args.policy, args.task, num_envs=args.num_envs)
    views, size = camera_views(policy)
    physics = None
    if args.physics_results:
        physics = EpisodeResults(**json.loads(args.physics_results.read_text())["physics"])
        if len(physics.success) != args.episodes:
            parser.error(f"{args.physics_results} holds {len(physics.success)} physics episodes, not {args.episodes}")
    results = physics_and_imagined(policy, views, size, args.task, args.episodes, args.seed, args.num_envs,
                                   args.world_model, args.progress, physics=physics is None, desc="uncertainty",
                                   num_samples=args.num_samples, sampling_steps=args.sampling_steps)
    physics = results.get("physics", physics)
    imagined = results["imagined"]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"physics": asdict(physics), "imagined": asdict(imagined)}))
    report(args, physics, imagined)


def report(args, physics: EpisodeResults, imagined: EpisodeResults) -> None:
    """The table, the figure and (unless --no-write) the section of docs/benchmarks.md."""
    table = rows(physics, imagined, default_limits(imagined))
    (args.output_dir / "limits.json").write_text(json.dumps(table, indent=1))
    physics_rate = sum(physics.success) / len(physics.success)
    solved = [(p, phys) for s, p, phys in zip(imagined.success, imagined.peak_uncertainty, physics.success) if s]
    auroc = success_auroc([-p for p, _ in solved], [phys for _, phys in solved]) if solved else float("nan")
    k = sum(physics.success)
    lo, hi = wilson_interval(k, len(physics.success))
    lines = ["| uncertainty limit | imagined success | physics success of the imagined successes | per-episode phi |",
             "|---|---|---|---|"]
    for r in table:
        limit = "none" if math.isinf(r["limit"]) else f"{r['limit']:.3e}"
        phi = "n/a" if math.isnan(r["phi"]) else f"{r['phi']:+.2f} [{r['phi_ci95'][0]:+.2f}, {r['phi_ci95'][1]:+.2f}]"
        lines.append(f"| {limit} | {r['imagined']:.2f} ({r['solved']}) | {r['precision']:.2f} | {phi} |")
    verdict = (f"Physics success {k / len(physics.success):.2f} [{lo:.2f}, {hi:.2f}] over {len(physics.success)} "
               f"episodes. Among the {len(solved)} imagined successes, the peak uncertainty tells the physics "
               f"failures with AUROC {auroc:.2f} (0.5: not at all).")
    print("\n".join(lines) + "\n\n" + verdict)
    figure = args.output_dir / "uncertainty_limits.png"
    plot(table, physics_rate, figure)
    if args.no_write:
        return
    figures = DOC.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    (figures / figure.name).write_bytes(figure.read_bytes())
    seconds = imagined.seconds + (0.0 if args.physics_results else physics.seconds)
    write_section("Imagined success under an uncertainty limit", command(), "\n\n".join([
        (f"Policy `{args.policy}`, {args.episodes} episodes in physics and in imagination from the same starts "
         f"(physics seeds {args.seed} on), deterministic actions; the imagined env samples each chunk "
         f"{args.num_samples} times with {args.sampling_steps} denoising steps (world model `{args.world_model}`, "
         f"progress model `{args.progress}`), the uncertainty being their spread. Each limit is applied afterwards to "
         f"the episodes' peak uncertainty, as the env that truncates would have (`eval.rl.under_uncertainty_limit`). "
         f"Wall time {seconds / 60:.0f} min."),
        "\n".join(lines), verdict, f"![imagined outcomes under an uncertainty limit](figures/{figure.name})"]))


if __name__ == "__main__":
    main()
