"""The measuring stick of imagination, from the runs of ``eval.policy.evaluate`` ({policy: {kind:
EpisodeResults}}, kinds ``imagined``, ``physics`` and, for the physics ceiling, ``physics_reseeded``).

Per policy, episode by episode over the paired starts (``closed_loop``): the imagined-minus-physics
success, the phi agreement of the two outcomes with its interval, the physics ceiling's phi (two
physics runs), and where a start succeeds in both the imagined success step minus the physics one,
beside the same lag between two physics runs (a stochastic policy's success step varies from run to
run: that spread is the floor under the imagined lag's interval). Over the family
(``physics_against_itself``): the reseeded physics run scored as if it were imagination, the floor
under the family's Pearson, Spearman, MMRV and mean |gap|.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from eval.ppi import ppi_success
from eval.success import PolicyComparison, agreement


def closed_loop(runs: dict) -> dict:
    """Per policy, episode by episode over the paired starts: the imagined-minus-physics success,
    the agreement (``eval.success.agreement``: counts, phi and its interval) of imagined and physics
    outcomes, the physics ceiling's (two physics runs, with ``physics_reseeded``), and where a start
    succeeds in both, the imagined success step minus the physics one (``step_lag``), and the
    reseeded physics one minus the first (``ceiling_step_lag``)."""
    out = {}
    for name, r in runs.items():
        physics, n = r["physics"], len(r["physics"].success)
        success = r["imagined"].success[:n]  # the paired starts
        reseeded = r.get("physics_reseeded")
        out[name] = {
            "gap": (sum(success) - sum(physics.success)) / n,
            "agreement": agreement(physics.success, success),
            "ceiling": agreement(physics.success, reseeded.success) if reseeded else None,
            "step_lag": lag_summary(step_lags(physics, r["imagined"])),
            "ceiling_step_lag": lag_summary(step_lags(physics, reseeded)) if reseeded else None,
            "outside_data": outside_data(r["imagined"].outside_data, r["imagined"].success),
        }
        if len(r["imagined"].success) > n:  # --paired: the rest imagined only
            out[name]["ppi"] = ppi_success(physics.success, success, r["imagined"].success[n:]).to_dict()
    return out


def step_lags(physics, other) -> list[int]:
    """Over the paired starts (the first ``len(physics.success)`` of ``other``) that succeed in both
    runs, the success step of ``other`` minus that of ``physics``."""
    pairs = zip(physics.success, physics.steps, other.success, other.steps)
    return [s - p for ok_p, p, ok_s, s in pairs if ok_p and ok_s]


def lag_summary(lags: list[int]) -> dict:
    """Count, mean with a 95% percentile-bootstrap interval, and mean absolute value of step lags."""
    if not lags:
        return {"n": 0, "mean": float("nan"), "mean_ci95": [float("nan")] * 2, "mean_abs": float("nan")}
    x = np.asarray(lags, dtype=float)
    ci = (stats.bootstrap((x,), np.mean, method="percentile", random_state=0).confidence_interval
          if len(x) >= 2 else (float("nan"),) * 2)
    return {"n": len(x), "mean": float(x.mean()), "mean_ci95": [float(ci[0]), float(ci[1])],
            "mean_abs": float(np.abs(x).mean())}


def family_step_lag(runs: dict, kind: str = "imagined") -> dict:
    """``lag_summary`` of every policy's step lags pooled: the family's imagined (or, with
    ``physics_reseeded``, its ceiling's) success step minus the physics one."""
    return lag_summary([lag for r in runs.values() if kind in r for lag in step_lags(r["physics"], r[kind])])


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
              "| success step, imagined - physics (both succeed) [95%] | the same, reseeded physics - physics "
              "| imagined episodes outside the data's states (of them succeeded) |"), "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        out = row.get("outside_data")
        outside = f"{out['outside']} / {out['n']} ({out['succeeded']})" if out else "n/a"
        lines.append(f"| {name} | {row['gap']:+.2f} | {phi(row['agreement'])} | {phi(row['ceiling'])} "
                     f"| {lag_markdown(row['step_lag'])} | {lag_markdown(row.get('ceiling_step_lag'))} | {outside} |")
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


def lag_markdown(lag: dict | None) -> str:
    """A ``lag_summary`` in words: mean [interval] (mean abs, n)."""
    if lag is None:
        return "not run"
    if not lag["n"]:
        return "n/a (n=0)"
    ci = "" if math.isnan(lag["mean_ci95"][0]) else f" [{lag['mean_ci95'][0]:+.1f}, {lag['mean_ci95'][1]:+.1f}]"
    return f"{lag['mean']:+.1f}{ci} (mean abs {lag['mean_abs']:.1f}, n={lag['n']})"


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
    lags = (f"Success step over the family's starts that succeed in both, imagined - physics: "
            f"{lag_markdown(family_step_lag(runs))}")
    if all("physics_reseeded" in r for r in runs.values()):
        lags += f"; reseeded physics - physics: {lag_markdown(family_step_lag(runs, 'physics_reseeded'))}"
    parts = [comparison.to_markdown(), ceiling_markdown(runs), closed_loop_markdown(closed_loop(runs)), lags]
    return "\n\n".join(p for p in parts if p)
