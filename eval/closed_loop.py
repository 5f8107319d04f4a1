"""The measuring stick of imagination, from the runs of ``eval.policy.evaluate`` ({policy: {kind:
EpisodeResults}}, kinds ``imagined``, ``physics`` and, for the physics ceiling, ``physics_reseeded``).

Per policy, episode by episode over the paired starts (``closed_loop``): the imagined-minus-physics
success, the phi agreement of the two outcomes with its interval, the physics ceiling's phi (two
physics runs), and where a start succeeds in both the imagined success step minus the physics one.
Over the family (``physics_against_itself``): the reseeded physics run scored as if it were
imagination, the floor under the family's Pearson, Spearman, MMRV and mean |gap|.
"""

from __future__ import annotations

import math

from eval.ppi import ppi_success
from eval.success import PolicyComparison, agreement


def closed_loop(runs: dict) -> dict:
    """Per policy, episode by episode over the paired starts: the imagined-minus-physics success,
    the agreement (``eval.success.agreement``: counts, phi and its interval) of imagined and physics
    outcomes, the physics ceiling's (two physics runs, with ``physics_reseeded``), and where a start
    succeeds in both, the imagined success step minus the physics one (mean, mean absolute, count)."""
    out = {}
    for name, r in runs.items():
        physics, n = r["physics"], len(r["physics"].success)
        success, steps = r["imagined"].success[:n], r["imagined"].steps[:n]  # the paired starts
        both = [k for k, (i, p) in enumerate(zip(success, physics.success)) if i and p]
        lag = [steps[k] - physics.steps[k] for k in both]
        out[name] = {
            "gap": (sum(success) - sum(physics.success)) / n,
            "agreement": agreement(physics.success, success),
            "ceiling": agreement(physics.success, r["physics_reseeded"].success) if "physics_reseeded" in r else None,
            "step_lag": {"n": len(lag), "mean": sum(lag) / len(lag) if lag else float("nan"),
                         "mean_abs": sum(map(abs, lag)) / len(lag) if lag else float("nan")},
            "outside_data": outside_data(r["imagined"].outside_data, r["imagined"].success),
        }
        if len(r["imagined"].success) > n:  # --paired: the rest imagined only
            out[name]["ppi"] = ppi_success(physics.success, success, r["imagined"].success[n:]).to_dict()
    return out


def compare(runs: dict, kind: str = "imagined") -> PolicyComparison:
    """The family's success counts: run ``kind`` of every policy (``imagined``, or
    ``physics_reseeded`` for the ceiling) against its first physics run."""
    names = list(runs)
    return PolicyComparison(
        names=names, imagined_successes=[sum(runs[n][kind].success) for n in names],
        imagined_n=[len(runs[n][kind].success) for n in names],
        physics_successes=[sum(runs[n]["physics"].success) for n in names],
        physics_n=[len(runs[n]["physics"].success) for n in names])


def physics_against_itself(runs: dict) -> PolicyComparison | None:
    """The family's physics ceiling: the reseeded physics run (``physics_reseeded``) in place of the
    imagined one, against the first physics run. Its correlations, MMRV and mean |gap| are what a
    simulator that were physics itself would score from these starts and episode counts; None
    unless every policy of at least 3 (what correlations need) has both runs."""
    if len(runs) < 3 or any("physics_reseeded" not in r for r in runs.values()):
        return None
    return compare(runs, "physics_reseeded")


def outside_data(outside: list[bool] | None, success: list[bool]) -> dict | None:
    """How many imagined episodes left the dataset's state range, and how many of those succeeded."""
    if outside is None:
        return None
    return {"n": len(outside), "outside": sum(outside), "succeeded": sum(o and s for o, s in zip(outside, success))}


def closed_loop_markdown(rows: dict) -> str:
    """The table of ``closed_loop``."""
    def phi(a: dict | None) -> str:
        if a is None:
            return "not run"
        return "n/a (one side constant)" if math.isnan(a["phi"]) else (
            f"{a['phi']:+.2f} [{a['phi_ci95'][0]:+.2f}, {a['phi_ci95'][1]:+.2f}]")
    lines = [("| policy | imagined - physics | per-episode phi [95% bootstrap] | physics ceiling phi (reseeded) "
              "| success step, imagined - physics (both succeed) | imagined episodes outside the data's states "
              "(of them succeeded) |"), "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lag, out = row["step_lag"], row.get("outside_data")
        steps = f"{lag['mean']:+.1f} (mean abs {lag['mean_abs']:.1f}, n={lag['n']})" if lag["n"] else "n/a (n=0)"
        outside = f"{out['outside']} / {out['n']} ({out['succeeded']})" if out else "n/a"
        lines.append(f"| {name} | {row['gap']:+.2f} | {phi(row['agreement'])} | {phi(row['ceiling'])} | {steps} "
                     f"| {outside} |")
    ppi = {name: row["ppi"] for name, row in rows.items() if "ppi" in row}
    if ppi:
        lines += ["", ("Physics success estimated from the paired starts and the imagined-only ones (prediction-powered, "
                       "eval.ppi), beside the paired physics episodes alone:"), "",
                  "| policy | estimate [95%] | imagined weight | physics only [95% Wilson] | paired / imagined only |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {e['estimate']:.2f} [{e['interval'][0]:.2f}, {e['interval'][1]:.2f}] | {e['weight']:.2f} | "
                  f"{e['real_only']:.2f} [{e['real_only_interval'][0]:.2f}, {e['real_only_interval'][1]:.2f}] | "
                  f"{e['paired']} / {e['imagined_only']} |" for name, e in ppi.items()]
    return "\n".join(lines)


def ceiling_markdown(runs: dict) -> str:
    """One line: the family's physics ceiling (``physics_against_itself``), or "" where it was not run."""
    ceiling = physics_against_itself(runs)
    if ceiling is None:
        return ""
    m = ceiling.summary()
    return (f"Physics against itself (each policy re-run from the same starts with its noise reseeded, in place of "
            f"imagination): Pearson r {m['pearson']:.2f}, Spearman rho {m['spearman']:.2f}, MMRV {m['mmrv']:.3f}, "
            f"mean |reseeded - physics| {m['mean_abs_gap']:.2f}")


def family_markdown(comparison: PolicyComparison, runs: dict) -> str:
    """The success table, the family's physics ceiling where it was run, and the closed-loop table."""
    parts = [comparison.to_markdown(), ceiling_markdown(runs), closed_loop_markdown(closed_loop(runs))]
    return "\n\n".join(p for p in parts if p)
