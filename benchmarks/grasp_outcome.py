"""Is a grasp's outcome visible in the frame where the gripper closes, and does imagination keep it?

    python -m benchmarks.grasp_outcome --dataset outputs/demo/dataset --val-episodes 30 \\
        --world-model outputs/demo/world_model/model \\
        --policy outputs/demo/policy/model --progress outputs/demo/progress/model --episodes 50

On Lift a grasp holds or slips by millimetres (near misses 1.5-3 cm beside the cube hold about half
the time), and the frame after the close already shows which. A classifier (``eval.probe.StateProbe``
with one logit, trained from scratch) learns it from real frames of the training episodes: the frame
after each episode's last close and the frame either side, labelled held when the fingers are still
kept apart by the cube (gap over 8 mm) 20 steps later. Its AUROC is read on

1. the held-out episodes' real frames after their close: how visible the outcome is at all;
2. (``--world-model``) the same episodes re-generated open loop from their first frames and recorded
   actions. A second classifier, trained on the re-generated training episodes, is read on both: it
   tells a change of the frames' look (blur, which it learns to read) from a loss of the outcome;
3. (``--policy``, ``--progress``) a policy (deterministic) closed loop in imagination, its actions
   replayed in physics from the same start (``benchmarks.imagined_replay``): both classifiers on the
   imagined frame after its last grasp, on physics' frame after the same actions and on that frame
   blurred to the imagined one's sharpness, against the replay's success; and the other way, the
   policy closed loop in physics, its actions imagined open loop: both classifiers on each frame after
   its last grasp against its physics success. If open loop keeps the outcome on the policy's own
   grasps and closed loop loses it, the closed loop is what to fix; if open loop loses it too, the
   data lack the policy's kind of grasp.

The labels of 3 are episode successes, not held grasps: a grasp that holds and drops later counts as
a failure there. Nothing here judges an imagined episode: it diagnoses where imagination parts from
physics.
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks._report import command, write_section
from benchmarks.imagined_replay import last_grasps

HELD_AFTER = 20  # steps after the close at which the fingers tell whether the grasp held
HELD_GAP = 0.008  # m: fingers further apart than this are held open by the cube (closed on air: about 0)


def finger_gap(states: Tensor) -> Tensor:
    """(..., S) raw proprioception -> (...,) distance between the two fingers (m)."""
    from simulator import keys

    left, right = keys.STATE_NAMES.index("finger_l"), keys.STATE_NAMES.index("finger_r")
    return states[..., left] - states[..., right]


def closes(episodes: list, regenerated: bool = False, spread: int = 0) -> tuple[Tensor, Tensor]:
    """The frames after each episode's last close (and ``spread`` frames either side), real or the
    episode's re-generation, (N, V, 3, h, w) uint8, with their labels (N,) bool: the grasp held
    (``HELD_GAP`` apart ``HELD_AFTER`` steps later, or at the episode's end). Episodes that never
    close are left out."""
    frames, labels = [], []
    for e in episodes:
        close = int(last_grasps(e.actions[None])[0])
        if close < 0:
            continue
        held = bool(finger_gap(e.states[min(close + HELD_AFTER, e.length - 1)]) > HELD_GAP)
        at = [min(max(close + 1 + d, 0), e.length - 1) for d in range(-spread, spread + 1)]
        frames.append((e.regenerated if regenerated else e.frames)[:, at].transpose(0, 1))
        labels += [held] * len(at)
    if not frames:
        raise ValueError("no episode closes its gripper: nothing to learn a grasp's outcome from")
    return torch.cat(frames), torch.tensor(labels)


class Readers(nn.Module):
    """Several classifiers read side by side: frames (N, V, 3, h, w) in [0, 1] -> (N, k) logits."""

    def __init__(self, *classifiers: nn.Module):
        super().__init__()
        self.classifiers = nn.ModuleList(classifiers)

    def forward(self, frames: Tensor) -> Tensor:
        return torch.cat([c(frames) for c in self.classifiers], -1)


@torch.no_grad()
def read(classifiers: Readers, frames: Tensor, batch_size: int = 256) -> Tensor:
    """(N, V, 3, h, w) uint8 -> (N, k) logits."""
    return torch.cat([classifiers(frames[i:i + batch_size].float() / 255) for i in range(0, len(frames), batch_size)])


def auroc(scores: Tensor, labels: Tensor) -> float | None:
    """AUROC of scores against labels where the score exists (not nan); None without both classes."""
    from eval.value import success_auroc

    ok = ~scores.isnan()
    y = labels[ok].bool()
    return success_auroc(scores[ok], y) if 0 < int(y.sum()) < len(y) else None


def row(name: str, scores: Tensor, labels: Tensor, label: str) -> dict:
    """One table row: (N, k) scores of the k classifiers against labels (N,)."""
    ok = ~scores[:, 0].isnan()
    return {"frames": name, "n": int(ok.sum()), "positive": int(labels[ok].sum()), "label": label,
            "auroc": [auroc(scores[:, j], labels) for j in range(scores.shape[1])]}


def markdown(rows: list[dict], names: list[str]) -> str:
    fmt = lambda a: "n/a" if a is None else f"{a:.2f}"
    lines = ["| frames read | n (positive) | label | " + " | ".join(f"AUROC, classifier trained on {n}" for n in names) + " |",
             "|" + "---|" * (3 + len(names))]
    lines += [f"| {r['frames']} | {r['n']} ({r['positive']}) | {r['label']} | " + " | ".join(fmt(a) for a in r["auroc"]) + " |"
              for r in rows]
    return "\n".join(lines)


def policy_rows(classifiers: Readers, args, views: tuple[str, ...]) -> tuple[list[dict], list[str]]:
    """Part 3: the policy closed loop in imagination (its actions replayed in physics) and closed loop
    in physics (its actions imagined open loop), both classifiers after its last grasp."""
    from benchmarks.imagined_replay import imagine_and_replay, paired_envs, physics_then_imagined
    from eval.success import agreement
    from simulator.physics.env import PhysicsEnv

    policy, physics, imagined, physics_cfg = paired_envs(args.policy, args.world_model, args.progress, args.episodes,
                                                         args.seed, args.num_envs)
    policy.stochastic = False
    if tuple(imagined.views) != tuple(views):
        raise ValueError(f"the policy reads views {imagined.views}, the classifiers were trained on {views}")
    closed = imagine_and_replay(policy, imagined, physics, args.episodes, args.seed, classifiers)
    physics.close()
    through = PhysicsEnv(replace(physics_cfg, terminate_on_success=False))
    opened = physics_then_imagined(policy, imagined, through, args.episodes, args.seed, probe=classifiers)
    through.close()
    replayed, real = closed["replayed"].float(), opened["physics"].float()
    rows = [row("closed loop in imagination: the imagined frame", closed["probed"], replayed, "replay's success"),
            row("its actions replayed in physics: physics' frame", closed["probed_physics"], replayed, "replay's success"),
            row("the same, blurred to the imagined frame's sharpness", closed["probed_blurred"], replayed,
                "replay's success"),
            row("closed loop in physics: physics' frame", opened["probed_physics"], real, "physics success"),
            row("its actions imagined open loop: the imagined frame", opened["probed"], real, "physics success")]
    def phi(truth: Tensor, imagined_success: Tensor) -> str:
        a = agreement(truth.tolist(), imagined_success.tolist())
        return f"phi {a['phi']:+.2f} [{a['phi_ci95'][0]:+.2f}, {a['phi_ci95'][1]:+.2f}]"

    score = auroc(closed["imagined"].float(), replayed)
    notes = [(f"closed loop in imagination: imagined success {closed['imagined'].float().mean():.2f}, its actions' "
              f"success in physics {replayed.mean():.2f}, {phi(closed['replayed'], closed['imagined'])}; the imagined "
              f"outcome as a score of the replay's success: AUROC {'n/a' if score is None else f'{score:.2f}'}"),
             (f"closed loop in physics: success {real.mean():.2f}, the same actions imagined open loop "
              f"{opened['imagined'].float().mean():.2f}, {phi(opened['physics'], opened['imagined'])}")]
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="a local LeRobotDataset that reverie-collect wrote")
    parser.add_argument("--val-episodes", type=int, default=30, help="the last N episodes are held out")
    parser.add_argument("--world-model", type=Path, default=None, help="re-generate the episodes open loop with it")
    parser.add_argument("--policy", type=Path, default=None, help="a saved policy (needs --world-model, --progress)")
    parser.add_argument("--progress", type=Path, default=None, help="the progress model that ends imagined episodes")
    parser.add_argument("--episodes", type=int, default=50, help="the policy's paired starts")
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=100_000, help="physics seed of the policy's start 0")
    parser.add_argument("--steps", type=int, default=1500, help="each classifier's training steps (batch 64)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/grasp_outcome"))
    parser.add_argument("--no-write", action="store_true", help="print, do not write docs/benchmarks.md")
    args = parser.parse_args()
    if args.policy is not None and (args.world_model is None or args.progress is None):
        parser.error("--policy needs --world-model and --progress (the imagined env)")

    from data.clips import DatasetConfig
    from data.episodes import load_episodes, regenerate
    from eval.probe import ProbeConfig, train_probe

    t0 = time.perf_counter()
    dataset = DatasetConfig(root=args.dataset, val_episodes=args.val_episodes)
    train_ids, held_ids = dataset.split()
    train, views = load_episodes(dataset, train_ids, desc="decode training episodes")
    held, _ = load_episodes(dataset, held_ids, desc="decode held-out episodes")
    probe_cfg = ProbeConfig(steps=args.steps)
    fit = lambda frames, labels: train_probe(frames, labels[:, None], probe_cfg, binary=True)
    names, classifiers = ["real frames"], [fit(*closes(train, spread=1))]
    if args.world_model is not None:
        regenerate(train + held, args.world_model, None, torch.device("cpu"))
        names.append("re-generated frames")
        classifiers.append(fit(*closes(train, regenerated=True, spread=1)))
    readers = Readers(*classifiers).eval()
    frames, held_labels = closes(held)
    rows = [row("held-out episodes: real", read(readers, frames), held_labels.float(), "grasp held")]
    if args.world_model is not None:
        frames, _ = closes(held, regenerated=True)
        rows.append(row("held-out episodes: re-generated open loop", read(readers, frames), held_labels.float(),
                        "grasp held"))
    notes = []
    if args.policy is not None:
        more, notes = policy_rows(readers, args, views)
        rows += more
    table = markdown(rows, names)
    print(table, *notes, sep="\n")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "grasp_outcome.json").write_text(json.dumps({"rows": rows, "notes": notes}, indent=1))
    if args.no_write:
        return
    write_section("Where a grasp's outcome is lost", command(), "\n\n".join([
        (f"Dataset `{args.dataset}` ({len(train_ids)} training episodes, {len(held_ids)} held out); world model "
         f"`{args.world_model}`, progress model `{args.progress}`, policy `{args.policy}` (deterministic, "
         f"{args.episodes} paired starts from seed {args.seed}). Classifiers: {args.steps} steps each on the "
         f"frames after the training episodes' last close and either side; held = finger gap over "
         f"{1000 * HELD_GAP:g} mm {HELD_AFTER} steps after the close. {(time.perf_counter() - t0) / 60:.0f} min in all."),
        table, "\n".join(f"- {n}" for n in notes)]))


if __name__ == "__main__":
    main()
