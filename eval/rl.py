"""What an RL run gained, in physics (the ground truth) and in imagination.

The policy runs ``eval_episodes`` episodes in the physics env from seeds ``EVAL_SEED + i`` and as
many in the imagined env from the same starts (rendered once, ``eval.policy.matched_starts``),
with its deterministic actions (the flow ODE), before the first RL iteration and after the last.
The imagined env is the run's own (``RLConfig.env``: sampling steps, guidance, reward, success
threshold) at the evaluation's batch and physics' horizon.
Imagined success above physics success after RL measures how much the policy learned to exploit
the world model rather than to solve the task; the episode-by-episode agreement of the two (their
phi correlation over paired starts) measures whether imagination sees which episodes fail
at all, the signal RL in it needs.

Outputs in the RL run's folder: eval_before.json / eval_after.json (per-episode results),
rl_eval.json, rl_eval.md (the before/after table with Wilson intervals) and learning_curve.png.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import draccus

from eval.policy import EpisodeResults, PairedEvaluation
from eval.success import agreement, wilson_interval
from simulator.env import ImaginedEnvConfig

log = logging.getLogger(__name__)
EVAL_SEED = 100_000  # physics seed of evaluation start 0; data collection uses seeds from 0 up


def physics_and_imagined(policy, views: tuple[str, ...], size: int, task: str, episodes: int, seed: int,
                         num_envs: int, world_model: Path | None = None, progress: Path | None = None,
                         env: ImaginedEnvConfig | None = None, device: str = "cpu", desc: str = "",
                         physics: bool = True, recorder=None) -> dict[str, EpisodeResults]:
    """Success of ``policy``'s deterministic actions over ``episodes`` physics episodes (seeds seed,
    seed + 1, ...) and, with a ``world_model``, over the imagined episodes from the same starts
    (``eval.policy.PairedEvaluation``, with ``env``'s settings). ``physics`` False skips the physics
    episodes (results already at hand); ``recorder`` records the imagined episodes."""
    was_stochastic = getattr(policy, "stochastic", False)
    policy.stochastic = False
    paired = PairedEvaluation(task, views, size, episodes, seed, num_envs, world_model, progress, env, device=device)
    results = {}
    if physics:
        results["physics"] = paired.physics(policy, f"{desc} physics")
    if world_model is not None:
        results["imagined"] = paired.imagined(policy, f"{desc} imagined", recorder)
    paired.close()
    policy.stochastic = was_stochastic
    return results


def evaluate_before_after(cfg, policy, label: str, reuse: bool | None = None) -> dict[str, EpisodeResults]:
    """The RL run's evaluation ``label`` ("before" or "after"), saved as eval_<label>.json: its
    imagined half runs with the run's own env settings (``cfg.env``). A saved one is reused when
    ``reuse`` (default: for "before", which a resumed run needs again)."""
    path = Path(cfg.output_dir) / f"eval_{label}.json"
    if (label == "before" if reuse is None else reuse) and path.is_file():
        return {k: EpisodeResults.from_dict(v) for k, v in json.loads(path.read_text()).items()}
    from policy import camera_views

    views, size = camera_views(policy)
    results = physics_and_imagined(policy, views, size, cfg.task, cfg.eval_episodes, EVAL_SEED, cfg.eval_num_envs,
                                   cfg.world_model, cfg.progress, cfg.env, cfg.device, desc=label)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: asdict(v) for k, v in results.items()}))
    log.info("%s RL: %s", label, {k: rate(v) for k, v in results.items()})
    return results


def rate(results: EpisodeResults) -> float:
    return sum(results.success) / max(1, len(results.success))


def summary(before: dict, after: dict) -> dict:
    """Success rates with 95% Wilson intervals, the physics gain, the imagined-minus-physics gap and
    the episode-by-episode agreement of imagination with physics."""
    table = {}
    for when, res in (("before", before), ("after", after)):
        for where, r in res.items():
            k, n = sum(r.success), len(r.success)
            table[f"{where}_{when}"] = {"rate": k / n, "ci95": list(wilson_interval(k, n)), "n": n}
    out = {"table": table, "physics_gain": rate(after["physics"]) - rate(before["physics"])}
    if "imagined" in after:
        out["exploitation_gap_after"] = rate(after["imagined"]) - rate(after["physics"])
        out["exploitation_gap_before"] = rate(before["imagined"]) - rate(before["physics"])
        for when, res in (("before", before), ("after", after)):
            out[f"agreement_{when}"] = agreement(res["physics"].success, res["imagined"].success)
    return out


def save_rl_report(cfg, before: dict, after: dict) -> Path:
    """rl_eval.json, rl_eval.md and learning_curve.png in the run's folder."""
    out = Path(cfg.output_dir)
    result = summary(before, after)
    (out / "rl_eval.json").write_text(json.dumps({"config": draccus.encode(cfg), **result}, indent=1))
    lines = ["| | success | 95% interval | episodes |", "|---|---|---|---|"]
    for key, row in result["table"].items():
        lines.append(f"| {key.replace('_', ' ')} | {row['rate']:.2f} | [{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}] "
                     f"| {row['n']} |")
    lines.append(f"\nPhysics gain: {result['physics_gain']:+.2f}.")
    if "exploitation_gap_after" in result:
        lines.append(f"Imagined minus physics success: {result['exploitation_gap_before']:+.2f} before, "
                     f"{result['exploitation_gap_after']:+.2f} after.")
        lines.append("Episode by episode (same start), imagined vs physics outcome: phi correlation "
                     + ", ".join(f"{result[f'agreement_{w}']['phi']:+.2f} [{result[f'agreement_{w}']['phi_ci95'][0]:+.2f}, "
                                 f"{result[f'agreement_{w}']['phi_ci95'][1]:+.2f}] {w}" for w in ("before", "after")) + ".")
    (out / "rl_eval.md").write_text("\n".join(lines) + "\n")
    plot_learning_curve(out, result)
    return out


def plot_learning_curve(out: Path, result: dict | None = None) -> Path:
    """The imagined rollouts' success and return per iteration, with the physics success before
    and after RL (and their intervals) as reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    it = [r["iteration"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(it, [r["success"] for r in records], "o-", label="imagined rollouts (training, stochastic)")
    if result:
        for when, color in (("before", "tab:gray"), ("after", "tab:green")):
            row = result["table"][f"physics_{when}"]
            x = 0 if when == "before" else max(it, default=1)
            ax1.errorbar([x], [row["rate"]], yerr=[[row["rate"] - row["ci95"][0]], [row["ci95"][1] - row["rate"]]],
                         fmt="s", color=color, capsize=4, label=f"physics {when} (n={row['n']})")
    ax1.set(xlabel="iteration", ylabel="success", ylim=(-0.05, 1.05), title="success")
    ax1.legend(fontsize=7)
    ax2.plot(it, [r["return"] for r in records], "o-")
    ax2.set(xlabel="iteration", ylabel="mean return (progress reward)", title="imagined return")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "learning_curve.png", dpi=110)
    plt.close(fig)
    return out / "learning_curve.png"
