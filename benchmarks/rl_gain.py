"""Does RL purely in imagination raise success in physics? Several seeds from one base policy.

    python -m benchmarks.rl_gain --policy outputs/policy/model --world-model outputs/world_model/model \\
        --progress outputs/progress/model --root outputs/demo/dataset --seeds 0 1 2 --episodes 100

The base policy is evaluated once, in physics and in imagination, from the matched starts
``EVAL_SEED + i`` (physics seeds never used for data). Each seed then runs ``reverie-rl`` (the world
model and the progress model frozen, no physics during training) and is evaluated again from the
same starts. Reported: success before and after per seed with Wilson intervals, the mean physics
gain over seeds with a t interval, and imagined minus physics success (how much the policy
exploits the world model).

``--simulator physics`` runs the same algorithm with its rollouts in physics (the control, written
to a section of its own): what RL could gain here were the imagined simulator faithful. Settings
not given are ``reverie-rl``'s defaults (``train.rl.loop.RLConfig``, the algorithm's config); the
section's title names the algorithm's real share and memory as they ran.
"""

import argparse
import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

from benchmarks._report import DOC, command, write_section
from data.clips import DatasetConfig
from eval.rl import rate
from eval.success import agreement, wilson_interval
from simulator.env import ImaginedEnvConfig
from train.rl.base import DEFAULT_ALGORITHM, AlgorithmConfig
from train.rl.loop import ALGORITHMS, SIMULATORS, RLConfig, train

# Settings of some algorithms that this script passes on (flag name = config field); lr goes to any.
ALGORITHM_FLAGS = {"group_size": ("grpo", "advantage_conditioned", "filtered_imitation"),
                   "real_share": ("advantage_conditioned", "filtered_imitation"),
                   "real_successes_only": ("filtered_imitation",), "memory": ("advantage_conditioned", "filtered_imitation")}
RL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RLConfig)}
ENV_DEFAULTS = next(f for f in dataclasses.fields(RLConfig) if f.name == "env").default_factory()  # RL's batch, horizon


def t_interval(values: list[float]) -> tuple[float, float]:
    """95% t interval of the mean (normal quantile past 30 values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    q = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(n, 1.96)
    return mean - q * sd / math.sqrt(n), mean + q * sd / math.sqrt(n)


def cell(results) -> str:
    if results is None:
        return "n/a (not evaluated)"
    k, n = sum(results.success), len(results.success)
    lo, hi = wilson_interval(k, n)
    return f"{k / n:.2f} [{lo:.2f}, {hi:.2f}]"


def phi_cell(results: dict) -> str:
    """The episode-by-episode agreement of imagined and physics outcomes from the same starts."""
    if "imagined" not in results:
        return "n/a (not evaluated)"
    a = agreement(results["physics"].success, results["imagined"].success)
    return "n/a (one side constant)" if math.isnan(a["phi"]) else f"{a['phi']:+.2f} [{a['phi_ci95'][0]:+.2f}, {a['phi_ci95'][1]:+.2f}]"


def gap_cell(results: dict) -> str:
    """Imagined minus physics success: how much the policy exploits the world model."""
    return f"{rate(results['imagined']) - rate(results['physics']):+.2f}" if "imagined" in results else "n/a"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--world-model", type=Path, default=None, help="needed unless --simulator physics --no-imagined-eval")
    parser.add_argument("--progress", type=Path, default=None, help="needed unless --simulator physics --no-imagined-eval")
    parser.add_argument("--root", type=Path, required=True, help="the dataset whose training episodes give the starts")
    parser.add_argument("--val-episodes", type=int, default=20)
    parser.add_argument("--algorithm", choices=ALGORITHMS, default=DEFAULT_ALGORITHM)
    parser.add_argument("--simulator", choices=SIMULATORS, default="imagined",
                        help="where the rollouts run; physics is the control (what a faithful simulator would give)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=RL_DEFAULTS["iterations"])
    parser.add_argument("--num-envs", type=int, default=ENV_DEFAULTS.num_envs)
    parser.add_argument("--group-size", type=int, default=None, help="grpo, advantage_conditioned, filtered_imitation")
    parser.add_argument("--max-steps", type=int, default=ENV_DEFAULTS.max_steps)
    parser.add_argument("--lr", type=float, default=None, help="the algorithm's learning rate (default: its config's)")
    parser.add_argument("--real-share", type=float, default=None,
                        help="advantage_conditioned, filtered_imitation: share of real dataset chunks per batch "
                             "(1 = the offline ablation)")
    parser.add_argument("--real-successes-only", action="store_true", default=None,
                        help="filtered_imitation: the real share from the dataset's successful episodes only")
    parser.add_argument("--memory", type=int, default=None,
                        help="advantage_conditioned, filtered_imitation: iterations whose trained imagined chunks are "
                             "drawn from (default: the algorithm's config's)")
    parser.add_argument("--episodes", type=int, default=100, help="physics (and imagined) evaluation episodes")
    parser.add_argument("--no-imagined-eval", action="store_true",
                        help="with --simulator physics: evaluate in physics only (no world model or progress model needed)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/rl_gain"))
    parser.add_argument("--no-write", action="store_true")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, refused before any run when its flags do not fit together."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.no_imagined_eval and args.simulator != "physics":
        parser.error("--no-imagined-eval is for --simulator physics: RL in imagination is evaluated in imagination too")
    if not args.no_imagined_eval and (args.world_model is None or args.progress is None):
        parser.error("--world-model and --progress are needed (or --simulator physics --no-imagined-eval)")
    for name, algorithms in ALGORITHM_FLAGS.items():
        if getattr(args, name) is not None and args.algorithm not in algorithms:
            parser.error(f"--{name.replace('_', '-')} is a setting of {' and '.join(algorithms)}")
    return args


def algorithm_config(args: argparse.Namespace) -> AlgorithmConfig:
    """The chosen algorithm's config: its defaults, with the settings given as flags."""
    given = {"lr": args.lr} | {name: getattr(args, name) for name in ALGORITHM_FLAGS}
    return AlgorithmConfig.get_choice_class(args.algorithm)(**{k: v for k, v in given.items() if v is not None})


def rl_config(args: argparse.Namespace, seed: int) -> RLConfig:
    """The ``reverie-rl`` run of one seed."""
    world_model = None if args.no_imagined_eval else args.world_model  # None: evaluated in physics only
    progress = {"progress": args.progress} if args.progress is not None else {}
    return RLConfig(policy=args.policy, world_model=world_model, **progress,
                    dataset=DatasetConfig(root=args.root, val_episodes=args.val_episodes),
                    algorithm=algorithm_config(args), simulator=args.simulator, iterations=args.iterations,
                    env=ImaginedEnvConfig(num_envs=args.num_envs, max_steps=args.max_steps),
                    eval_episodes=args.episodes, output_dir=args.output_dir / f"seed{seed}", seed=seed)


def run_seeds(args: argparse.Namespace) -> float:
    """Runs (or resumes) RL for every seed; returns the minutes it took."""
    t0 = time.perf_counter()
    for i, seed in enumerate(args.seeds):
        out = args.output_dir / f"seed{seed}"
        first = args.output_dir / f"seed{args.seeds[0]}" / "eval_before.json"
        if i > 0 and first.is_file() and not (out / "eval_before.json").exists():
            out.mkdir(parents=True, exist_ok=True)
            shutil.copy(first, out / "eval_before.json")  # one evaluation of the base policy serves every seed
        train(rl_config(args, seed))
    return (time.perf_counter() - t0) / 60


def load_results(args: argparse.Namespace, seed: int, when: str) -> dict:
    """A seed's evaluation ``when`` ("before" or "after" RL): EpisodeResults by simulator."""
    from eval.policy import EpisodeResults

    path = args.output_dir / f"seed{seed}" / f"eval_{when}.json"
    return {k: EpisodeResults.from_dict(v) for k, v in json.loads(path.read_text()).items()}


def gain_table(args: argparse.Namespace, before: dict) -> tuple[str, str]:
    """The markdown table of success before and after RL per seed, and the verdict on the mean gain."""
    lines = ["| run | physics success | imagined success | physics gain | imagined − physics | per-episode phi |",
             "|---|---|---|---|---|---|",
             (f"| base policy | {cell(before['physics'])} | {cell(before.get('imagined'))} | | "
             f"{gap_cell(before)} | {phi_cell(before)} |")]
    gains = []
    for seed in args.seeds:
        after = load_results(args, seed, "after")
        gains.append(rate(after["physics"]) - rate(before["physics"]))
        lines.append(f"| after RL, seed {seed} | {cell(after['physics'])} | {cell(after.get('imagined'))} | "
                     f"{gains[-1]:+.2f} | {gap_cell(after)} | {phi_cell(after)} |")
    lo, hi = t_interval(gains)
    mean = sum(gains) / len(gains)
    verdict = (f"Mean physics gain over {len(gains)} seeds: {mean:+.3f} (95% t interval [{lo:+.3f}, {hi:+.3f}]); "
               f"target +0.15.")
    return "\n".join(lines), verdict


def wall_times(args: argparse.Namespace, before: dict, minutes: float) -> str:
    """The sentence on wall time: RL per seed, one evaluation, and this invocation."""
    rl_minutes = [sum(r["collect_s"] + r["update_s"] for r in map(json.loads, (
        args.output_dir / f"seed{seed}" / "metrics.jsonl").read_text().splitlines())) / 60 for seed in args.seeds]
    eval_minutes = sum(r.seconds for r in before.values()) / 60
    return (f"RL wall time per seed "
            f"{', '.join(f'{m:.0f}' for m in rl_minutes)} min; one evaluation (physics and imagined) {eval_minutes:.0f} min; "
            f"this invocation {minutes:.0f} min (runs already finished are reused, not re-run).")


def settings_named(args: argparse.Namespace) -> list[str]:
    """The algorithm's real share (and its source) and memory as they ran, for the section's title
    and figure: runs with other settings write sections of their own."""
    algo = algorithm_config(args)
    named = []
    if hasattr(algo, "real_share"):
        named.append(f"real share {algo.real_share:g}"
                     + (" from successes" if getattr(algo, "real_successes_only", False) else ""))
    if getattr(algo, "memory", 1) > 1:
        named.append(f"memory {algo.memory}")
    return named


def figure_name(args: argparse.Namespace) -> str:
    """The learning curve's file name: grpo keeps the plain name; another algorithm, and its
    settings, name it apart (earlier runs' figures stay)."""
    algo = algorithm_config(args)
    parts = [] if args.algorithm == "grpo" else [args.algorithm]
    if hasattr(algo, "real_share"):
        parts.append(f"real{algo.real_share:g}" + ("_successes" if getattr(algo, "real_successes_only", False) else ""))
    if getattr(algo, "memory", 1) > 1:
        parts.append(f"memory{algo.memory}")
    return ("rl_learning_curve" if args.simulator == "imagined" else "rl_physics_learning_curve") + "".join(
        f"_{p}" for p in parts) + ".png"


def section_title(args: argparse.Namespace) -> tuple[str, str]:
    """The section's title, and where the RL ran, for its text. As for the figure, grpo keeps the
    plain title; another algorithm and its settings are named in it."""
    tag = ", ".join(([] if args.algorithm == "grpo" else [args.algorithm]) + settings_named(args))
    tag = f" ({tag})" if tag else ""
    return {"imagined": (f"RL in imagination{tag}: physics success before and after", (
        f"in the imagined env (world model `{args.world_model}`, progress model `{args.progress}`), {args.iterations} "
        f"iterations of {args.num_envs} imagined episodes")),
        "physics": (f"RL in physics{tag}, the control: what a faithful simulator would give", (
        f"with its rollouts in physics (the control; reward 1 at success), {args.iterations} iterations of "
        f"{args.num_envs} physics episodes"))}[args.simulator]


def write_report(args: argparse.Namespace, table: str, verdict: str, times: str) -> None:
    """Writes the section of docs/benchmarks.md, with the first seed's learning curve as its figure."""
    figures = DOC.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    figure = figure_name(args)
    shutil.copy(args.output_dir / f"seed{args.seeds[0]}" / "learning_curve.png", figures / figure)
    title, where = section_title(args)
    algo = algorithm_config(args)
    write_section(title, command(), "\n\n".join([
        (f"Base policy `{args.policy}`; {args.algorithm} {where} of at most {args.max_steps} steps from the "
        f"dataset's training-episode starts. "
        + (f"A share of {algo.real_share:g} of each batch is real dataset chunks"
           f"{' from successful episodes' if getattr(algo, 'real_successes_only', False) else ''}. "
           if hasattr(algo, "real_share") else "")
        + (f"The kept episodes of the last {algo.memory} iterations are imitated. " if getattr(algo, "memory", 1) > 1
           else "")
        + f"Evaluation: {args.episodes} episodes in physics"
        f"{'' if args.no_imagined_eval else f' and {args.episodes} in imagination from the same starts'} "
        f"(physics seeds 100000 on), deterministic "
        f"actions (the flow ODE). Success with 95% Wilson intervals; per-episode phi: the correlation of "
        f"imagined and physics outcomes over the paired starts (0: imagination does not tell which episodes fail), "
        f"with a bootstrap 95% interval. " + times),
        table, verdict, f"![learning curve, first seed](figures/{figure})"]))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    minutes = run_seeds(args)
    before = load_results(args, args.seeds[0], "before")
    table, verdict = gain_table(args, before)
    times = wall_times(args, before, minutes)
    print(table + "\n\n" + verdict)
    if not args.no_write:
        write_report(args, table, verdict, times)


if __name__ == "__main__":
    main()
