"""Policy evaluation in imagination against physics, over a graded family of policies.

    python -m benchmarks.policy_evaluation --world-model outputs/world_model/model \
        --progress outputs/progress/model --episodes 20

Runs ``reverie-eval policy`` (eval.policy): every policy of the family for N episodes in the
ImaginedEnv and N in the PhysicsEnv from matched start states (physics seeds never used for
data), then success rates with Wilson intervals, Pearson and Spearman correlations with
bootstrap intervals, MMRV and the mean |imagined - physics|; and closed loop, episode by episode,
the per-episode phi beside the physics ceiling (the same policy re-run in physics with its noise
reseeded) and the imagined-minus-physics success step (``eval.closed_loop``).
"""

import argparse
import shutil
import time
from pathlib import Path

from benchmarks._report import DOC, command, write_section
from eval.closed_loop import ceiling_markdown, closed_loop, closed_loop_markdown, family_markdown
from eval.policy import EvalPolicyConfig, evaluate, save_report
from simulator.env import ImaginedEnvConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-model", type=Path, required=True)
    parser.add_argument("--progress", type=Path, required=True)
    parser.add_argument("--stats-root", type=Path, default=None, help="dataset statistics, for older world models")
    parser.add_argument("--policies", nargs="+", default=None,
                        help="NAME of the scripted family or NAME=FOLDER of a saved policy (default: the scripted family)")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--sampling-steps", type=int, default=1)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/policy_eval"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    cfg = EvalPolicyConfig(world_model=args.world_model, progress=args.progress, stats_root=args.stats_root,
                           policies=tuple(args.policies) if args.policies else None, episodes=args.episodes, num_envs=args.num_envs,
                           env=ImaginedEnvConfig(sampling_steps=args.sampling_steps), output_dir=args.output_dir)
    t0 = time.perf_counter()
    comparison, runs = evaluate(cfg)
    save_report(comparison, runs, cfg)
    table = closed_loop_markdown(closed_loop(runs))
    print(family_markdown(comparison, runs))
    if args.no_write:
        return
    seconds = {k: sum(r[k].seconds for r in runs.values() if k in r) for k in ("imagined", "physics", "physics_reseeded")}
    figures = DOC.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    # the scripted family keeps the plain names; a run over given policies gets its own section and figure
    name = "policy_eval" + ("_given" if args.policies else "")
    shutil.copy(args.output_dir / "policy_eval.png", figures / f"{name}.png")
    title = "Policy evaluation: imagined vs physics" + (" (given policies)" if args.policies else "")
    write_section(title, command(), "\n\n".join([
        (f"{len(comparison.names)} scripted Lift policies of graded quality (policy.scripted.policy_family: the expert, "
         "action noise, growing shares of failure modes)" if not args.policies else
         f"{len(comparison.names)} Lift policies ({', '.join(args.policies)})")
        + f", {cfg.episodes} episodes each in each simulator from matched "
        f"start states (physics seeds {cfg.seed} to {cfg.seed + cfg.episodes - 1}, never used for data). Imagined: "
        f"world model `{args.world_model}` ({cfg.env.sampling_steps} sampling step(s)), progress model `{args.progress}`, "
        f"success = success probability > {cfg.env.success_threshold}. Wall time: imagined {seconds['imagined']:.0f} s, "
        f"physics {seconds['physics']:.0f} s (reseeded {seconds['physics_reseeded']:.0f} s); {time.perf_counter() - t0:.0f} s in all.",
        "\n\n".join(p for p in (comparison.to_markdown(), ceiling_markdown(runs)) if p),
        ("Closed loop, episode by episode over the same starts (physics ceiling: the same policy re-run in physics "
         "with its sampling noise reseeded; success step: env steps, where a start succeeds in both):"),
        table,
        f"![imagined vs physics success](figures/{name}.png)"]))


if __name__ == "__main__":
    main()
