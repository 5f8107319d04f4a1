"""Policy evaluation in imagination against physics over a learned family of visuomotor policies.

    python -m benchmarks.learned_family --dataset outputs/nm/dataset \
        --world-model outputs/nm/wm/model --progress outputs/nm/progress/model --episodes 50

The scripted family does not look at the frames, so it tests the rendering of given actions, not
the closed loop of a policy that acts on what it sees (issue 21). This family does: policies
cloned by ``reverie-train policy`` from the dataset, of spread quality by construction (LEARNED:
behaviour cloning from 10, 25, 50, 100 and all training episodes, a short run, the successful
episodes only, and lerobot's Diffusion Policy at CPU size). Each is trained once under
``<output-dir>/policies/<name>`` (a re-run resumes or skips it), then ``reverie-eval policy`` runs
them all from the same paired starts in both simulators. ``--physics-ceiling`` re-runs each policy
in physics with its noise reseeded, which scores physics against itself over the family: the
Pearson, Spearman, MMRV and mean |gap| that a perfect simulator would get from these episode counts.
``--physics-from`` reuses an earlier run's physics episodes, to compare world models on one
physics run.
"""

import argparse
import json
import shutil
import time
from pathlib import Path

from benchmarks._report import DOC, command, write_section

# name: reverie-train policy options. Steps are a share of --steps (1 = all of them).
LEARNED = {
    "bc10": {"train_episodes": 10},
    "bc25": {"train_episodes": 25},
    "bc50": {"train_episodes": 50},
    "bc100": {"train_episodes": 100},
    "bc_all": {},
    "bc_all_short": {"step_share": 0.25},
    "bc_successes": {"episodes": "success"},
    "diffusion": {"policy_type": "diffusion"},
}


def train_family(dataset: Path, val_episodes: int, steps: int, out: Path) -> dict[str, Path]:
    """Trains (or resumes) every policy of LEARNED; returns {name: saved policy folder}."""
    from data.clips import DatasetConfig
    from train.policy import TrainPolicyConfig, train

    folders = {}
    for name, options in LEARNED.items():
        options = dict(options)
        share = options.pop("step_share", 1.0)
        subset = options.pop("train_episodes", None)
        cfg = TrainPolicyConfig(dataset=DatasetConfig(root=dataset, val_episodes=val_episodes, train_episodes=subset),
                                steps=max(1, round(steps * share)), output_dir=out / name, **options)
        saved = out / name / "train_config.json"
        if saved.is_file() and (trained := json.loads(saved.read_text())["steps"]) != cfg.steps:
            # train() would resume it to the new count, and the family (and any --physics-from run of it) would change
            raise ValueError(f"{out / name} was trained for {trained} steps, this run asks {cfg.steps}: give the "
                             f"--steps it was trained with, or another --output-dir")
        print(f"policy {name}: {cfg.steps} steps", flush=True)
        folders[name] = train(cfg)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="the dataset the policies are cloned from")
    parser.add_argument("--val-episodes", type=int, default=20, help="held-out episodes (as the world model's)")
    parser.add_argument("--steps", type=int, default=600,
                        help="training steps of a policy (600: the family in docs/benchmarks.md)")
    parser.add_argument("--world-model", type=Path, required=True)
    parser.add_argument("--progress", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=50, help="paired episodes per policy")
    parser.add_argument("--physics-from", type=Path, default=None,
                        help="policy_eval.json of an earlier run of this family: its physics episodes are reused")
    parser.add_argument("--physics-ceiling", action="store_true",
                        help="also re-run every policy in physics with its noise reseeded (reused from --physics-from "
                             "where it ran there): the family's scores of physics against itself")
    parser.add_argument("--action-guidance", type=float, default=1.0,
                        help="the imagined env's classifier-free guidance on the actions (1: none)")
    parser.add_argument("--sampling-steps", type=int, default=1,
                        help="the imagined env's sampling steps per chunk")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/learned_family"),
                        help="policies under <output-dir>/policies, the evaluation under <output-dir>/<eval-name>")
    parser.add_argument("--eval-name", default="eval", help="to evaluate the same policies in another world model")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    from eval.closed_loop import family_markdown
    from eval.policy import EvalPolicyConfig, evaluate, save_report
    from simulator.env import ImaginedEnvConfig

    t0 = time.perf_counter()
    folders = train_family(args.dataset, args.val_episodes, args.steps, args.output_dir / "policies")
    trained = time.perf_counter() - t0
    cfg = EvalPolicyConfig(world_model=args.world_model, progress=args.progress,
                           policies=tuple(f"{n}={f}" for n, f in folders.items()), episodes=args.episodes,
                           physics_from=args.physics_from, physics_ceiling=args.physics_ceiling,
                           output_dir=args.output_dir / args.eval_name,
                           env=ImaginedEnvConfig(action_guidance=args.action_guidance,
                                                 sampling_steps=args.sampling_steps))
    comparison, runs = evaluate(cfg)
    save_report(comparison, runs, cfg)
    table = family_markdown(comparison, runs)
    print(table)
    if args.no_write:
        return
    figures = DOC.parent / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    shutil.copy(cfg.output_dir / "policy_eval.png", figures / "policy_eval_learned.png")
    seconds = {k: sum(r[k].seconds for r in runs.values() if k in r) for k in ("imagined", "physics", "physics_reseeded")}
    write_section("Policy evaluation: learned family", command(), "\n\n".join([
        f"{len(folders)} visuomotor Lift policies cloned from `{args.dataset}` ({', '.join(folders)}; "
        f"benchmarks/learned_family.py LEARNED), {args.steps} training steps each unless named short, "
        f"{cfg.episodes} paired episodes each from physics seeds {cfg.seed} on. Imagined: world model "
        f"`{args.world_model}`, progress model `{args.progress}`, {args.sampling_steps} sampling step(s), action guidance {args.action_guidance:g}. Wall time: training {trained:.0f} s, imagined "
        f"{seconds['imagined']:.0f} s, physics {seconds['physics']:.0f} s"
        + (f" (reseeded {seconds['physics_reseeded']:.0f} s)" if args.physics_ceiling else "")
        + (f" (physics reused from `{args.physics_from}`)" if args.physics_from else "") + ".",
        table, "![learned family](figures/policy_eval_learned.png)"]))


if __name__ == "__main__":
    main()
