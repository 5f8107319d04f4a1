"""Do imagined outcomes tell the physics outcome of the same actions?

    python -m benchmarks.imagined_replay --policy outputs/policy/model \\
        --world-model outputs/world_model/model --progress outputs/progress/model --episodes 60

RL in imagination learns from the outcomes of imagined episodes: their labels must say what the
same actions would do in physics. The policy runs N episodes in imagination from matched physics
starts, acting as in the RL rollouts (its ODE from fresh noise) and as in evaluation
(deterministic); each imagined episode's actions are then replayed open loop in physics from the
same start, until the step where the imagined episode ended. Reported per mode:

- imagined success, the replayed actions' physics success, and the phi between them per episode;
- at the last grasp (the step where the gripper command turns to closing), the world model's
  predicted end effector against physics' after the same actions;
- for each grasp tolerance, the imagined success with a grasp check applied afterwards (the last
  grasp's predicted end effector within the tolerance of the object's true start position) and its
  phi with the replayed outcome. The check reads the physics engine's object state, so it is a
  diagnostic of where imagination fails, never an imagined outcome (the rule of the simulator);
- with ``--probe`` (a state probe trained on real frames, as ``reverie-eval world_model`` saves in
  ``<output_dir>/probe``): what the imagined frames show at the last grasp, the end effector and the
  cube read from them, against the same probe's reading of physics' frames after the same actions
  (its own error on real frames cancels in the difference), beside the state head's end effector.
  A policy that grasps by what it sees closes where the frames put the gripper around the cube.
  The probe also reads physics' frames blurred, view by view, to the imagined frames' sharpness
  (the Gaussian whose high-frequency energy matches theirs): what blur alone does to its reading,
  which the difference above would otherwise count as a difference of content.

And the other direction, which leaves the policy's reading of imagined frames out: the policy runs
closed loop in physics (past success, to the step limit), and its recorded actions are imagined
open loop from the same starts. Reported: physics success against the imagined success of the same
actions (phi), and, after 8 / 16 / 32 / 48 actions, the state head's end effector minus physics'
and the PSNR of the imagined frames against physics' per view. A world model trained on an
expert's actions alone can score those well and still not know what the policy's actions do.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks._report import command, write_section
from eval.fidelity import per_frame_scores
from eval.success import agreement
from simulator import keys
from simulator.rollout import Rollout


def last_grasps(actions: torch.Tensor) -> torch.Tensor:
    """(B, T, A) raw actions -> (B,) step of the last grasp (where the gripper command, the action's
    last dimension, positive closing, turns to closing), -1 where none."""
    closing = actions[..., -1] > 0
    turns = closing & ~torch.cat([torch.zeros_like(closing[:, :1]), closing[:, :-1]], 1)
    return torch.where(turns, torch.arange(actions.shape[1]), -1).amax(1)


def aimed_grasp(eef: torch.Tensor, obj: torch.Tensor, tolerance: float, height: float) -> torch.Tensor:
    """(B, 3) end-effector positions at a grasp and (B, 3) object positions -> (B,) bool: within
    ``tolerance`` in x-y and at most ``height`` above the object."""
    return ((eef[:, :2] - obj[:, :2]).norm(dim=1) <= tolerance) & (eef[:, 2] - obj[:, 2] <= height)


@torch.no_grad()
def imagine_and_replay(policy, imagined, physics, episodes: int, seed: int, probe=None) -> dict[str, torch.Tensor]:
    """Per episode: imagined success, physics success of the replayed actions, the object's start
    position (3,), and the imagined and physics end effector (3,) after the last grasp (nan: none);
    with a ``probe`` (eval.probe.StateProbe), ``probed`` and ``probed_physics`` (K,): its reading of
    the imagined frames and of physics' frames after the last grasp (nan: none), so that the probe's
    own error cancels in their difference."""
    B, stride, views = imagined.num_envs, imagined.frame_stride, imagined.views  # the probe's view order in both
    out = {k: [] for k in ("imagined", "replayed", "object", "eef_imagined", "eef_physics", "probed", "probed_physics",
                           "probed_blurred")}
    for first in range(0, episodes, B):
        rollout = Rollout(imagined, seed=first)
        policy.reset(rollout.obs, rollout.info, seeds=list(range(first, first + B)))
        chunks, live, states, frames = [], [], [], []
        for step in rollout.run(policy.select_action_chunk):
            chunks.append(step.actions.cpu().float())
            live.append(step.alive[:, None].expand(-1, step.actions.shape[1]))
            states.append(step.info["states"].repeat_interleave(stride, 1))
            if probe is not None:  # (B, T, V, 3, h, w) after each action
                frames.append(torch.stack([step.info["frames"][v].repeat_interleave(stride, 1) for v in views], 2))
        solved, info = rollout.solved, rollout.start_info
        # the imagined actions replayed in physics, chunk by chunk, for as long as imagination ran
        replay = Rollout(physics, seed=seed + first)
        replayed, physics_states, physics_frames = torch.zeros(B, dtype=torch.bool), [], []
        recorded = iter(chunks)
        for alive, step in zip(live, replay.run(lambda _, recorded=recorded: next(recorded))):
            physics_states.append(step.info["states"])
            if probe is not None:  # (B, H, V, 3, h, w) after each action
                physics_frames.append(torch.stack([step.info["frames"][v] for v in views], 2))
            replayed |= step.terminated & step.alive & alive[:, 0]  # solved while the imagined episode ran
        # past the end of an imagined episode its actions are not its own: no grasp there
        grasp = last_grasps(torch.where(torch.cat(live, 1)[..., None], torch.cat(chunks, 1), -1.0))
        none = (grasp < 0)[:, None]
        n = min(B, episodes - first)
        out["imagined"].append(solved[:n])
        out["replayed"].append(replayed[:n])
        out["object"].append(info["object_state"][:n, :3].float())
        for key, trajectory in (("eef_imagined", torch.cat(states, 1)), ("eef_physics", torch.cat(physics_states, 1))):
            # physics may have ended every episode before imagination did: its last state then
            at = grasp.clamp(0, trajectory.shape[1] - 1)[:, None, None].expand(-1, 1, 3)
            eef = trajectory[..., :3].float().gather(1, at)[:, 0]
            out[key].append(torch.where(none, torch.nan, eef)[:n])
        if probe is not None:
            at = {}
            for key, seen in (("probed", torch.cat(frames, 1)), ("probed_physics", torch.cat(physics_frames, 1))):
                # physics' last frame where it ended first, as for the states
                at[key] = seen[torch.arange(B), grasp.clamp(0, seen.shape[1] - 1)].float() / 255  # (B, V, 3, h, w)
            at["probed_blurred"] = blurred_to(at["probed_physics"], at["probed"])
            for key, seen in at.items():
                out[key].append(torch.where(none, torch.nan, probe(seen))[:n])
    return {k: torch.cat(v) for k, v in out.items() if v}


OPEN_LOOP_HORIZONS = (8, 16, 32, 48)  # actions after which the other direction compares the two simulators


@torch.no_grad()
def physics_then_imagined(policy, imagined, physics, episodes: int, seed: int,
                          horizons: tuple[int, ...] = OPEN_LOOP_HORIZONS, probe=None) -> dict[str, torch.Tensor]:
    """Per episode: ``physics`` success of the policy run closed loop in ``physics`` (an env that does
    not end episodes at success), ``imagined`` success of the same actions imagined open loop from the
    same start for as long as physics ran, ``physics_step`` and ``imagined_step``, the env step of each
    one's first success (0: none), and after each of ``horizons`` actions ``state_error`` (K, 3)
    (the state head's end effector minus physics', m) and ``psnr`` (K, V) (imagined frames against
    physics', dB); nan where the imagined episode had ended (solved) before. With a ``probe``,
    ``probed`` and ``probed_physics``: its reading of the imagined frame and of physics' frame after
    the last grasp of physics' actions (nan: no grasp, or the imagined episode had ended)."""
    B, stride, views = imagined.num_envs, imagined.frame_stride, imagined.views
    out = {k: [] for k in ("physics", "imagined", "physics_step", "imagined_step", "state_error", "psnr", "probed",
                           "probed_physics")}
    for first in range(0, episodes, B):
        run = Rollout(physics, seed=seed + first)
        policy.reset(run.obs, run.info, seeds=list(range(first, first + B)))
        chunks, real, solved = [], [], torch.zeros(B, dtype=torch.bool)
        for step in run.run(policy.select_action_chunk):
            chunks.append(step.actions.cpu().float())
            real.append((step.info["states"][..., :3].float(), torch.stack([step.info["frames"][v] for v in views], 2)))
            solved |= torch.as_tensor(step.info["success"]).bool() & step.alive
        dream, recorded, seen = Rollout(imagined, seed=first), iter(chunks), []
        for _, step in zip(chunks, dream.run(lambda _, recorded=recorded: next(recorded))):
            frames = torch.stack([step.info["frames"][v] for v in views], 2).repeat_interleave(stride, 1)
            seen.append((step.info["states"][..., :3].float().repeat_interleave(stride, 1), frames, step.alive))
        errors, psnrs = [], []
        for t in horizons:  # after action t: index t - 1 of the chunk (t - 1) // H
            c, i = divmod(t - 1, chunks[0].shape[1])
            if c >= len(seen):
                errors.append(torch.full((B, 3), torch.nan)); psnrs.append(torch.full((B, len(views)), torch.nan))
                continue
            state, frames, alive = seen[c]
            psnr, _ = per_frame_scores(frames[:, i].float() / 255, real[c][1][:, i].float() / 255)  # (B, V)
            errors.append(torch.where(alive[:, None], state[:, i] - real[c][0][:, i], torch.nan))
            psnrs.append(torch.where(alive[:, None], psnr, torch.nan))
        n = min(B, episodes - first)
        for key, value in (("physics", solved), ("imagined", dream.solved), ("physics_step", run.info["success_step"]),
                           ("imagined_step", dream.info["success_step"]), ("state_error", torch.stack(errors, 1)),
                           ("psnr", torch.stack(psnrs, 1))):
            out[key].append(value[:n])
        if probe is not None:
            grasp, rows = last_grasps(torch.cat(chunks, 1)), torch.arange(B)
            dreamt = torch.cat([f for _, f, _ in seen], 1)  # (B, T, V, 3, h, w), T: until every imagined episode ended
            alive = torch.cat([a[:, None].expand(-1, f.shape[1]) for _, f, a in seen], 1)
            at = grasp.clamp(0, dreamt.shape[1] - 1)
            shown = (grasp >= 0) & (grasp < dreamt.shape[1]) & alive[rows, at]
            out["probed"].append(torch.where(shown[:, None], probe(dreamt[rows, at].float() / 255), torch.nan)[:n])
            real_frames = torch.cat([f for _, f in real], 1)[rows, grasp.clamp(min=0)].float() / 255
            out["probed_physics"].append(torch.where((grasp >= 0)[:, None], probe(real_frames), torch.nan)[:n])
    return {k: torch.cat(v) for k, v in out.items() if v}


def open_loop_summary(run: dict[str, torch.Tensor], horizons: tuple[int, ...], views: tuple[str, ...]) -> str:
    a = agreement(run["physics"].tolist(), run["imagined"].tolist())
    mm = run["state_error"] * 1000
    per = lambda x: " / ".join(f"{v:.1f}" for v in x.tolist())
    xy, z = mm[..., :2].norm(dim=-1).nanmean(0), mm[..., 2].nanmean(0)
    psnr = "; ".join(f"{v} {per(run['psnr'][..., j].nanmean(0))}" for j, v in enumerate(views))
    both = run["physics"] & run["imagined"]
    lag = (run["imagined_step"] - run["physics_step"])[both].float()
    timing = (f"success step on the same actions, imagined - physics {lag.mean():+.1f} (mean abs "
              f"{lag.abs().mean():.1f}, n={len(lag)})" if len(lag) else "no start succeeds in both")
    return (f"the policy's physics actions imagined open loop ({len(run['physics'])} episodes): physics "
            f"{run['physics'].float().mean():.2f}, imagined {run['imagined'].float().mean():.2f}, phi {a['phi']:+.2f} "
            f"[{a['phi_ci95'][0]:+.2f}, {a['phi_ci95'][1]:+.2f}]; {timing}; after {' / '.join(map(str, horizons))} actions the state "
            f"head's end effector minus physics' x-y {per(xy)} mm, z {' / '.join(f'{v:+.1f}' for v in z.tolist())} mm; "
            f"PSNR of the imagined frames against physics' (dB) {psnr}")


def blurred_to(frames: torch.Tensor, like: torch.Tensor, sigmas: torch.Tensor | None = None) -> torch.Tensor:
    """``frames`` (..., 3, h, w) in [0, 1], each blurred by the Gaussian (sigma from ``sigmas``, in
    pixels) whose result's high-frequency energy is nearest that of the same frame of ``like`` (in
    log); a frame of ``like`` at least as sharp as its own stays unblurred."""
    from torchvision.transforms.functional import gaussian_blur

    from eval.fidelity import high_frequency_energy

    sigmas = torch.linspace(0.25, 3.0, 12) if sigmas is None else sigmas
    flat, target = frames.reshape(-1, *frames.shape[-3:]), high_frequency_energy(like).reshape(-1)
    size = frames.shape[-1]
    candidates = [flat] + [gaussian_blur(flat, [min(2 * int(3 * s + 0.5) + 1, size - 1 | 1)] * 2, [float(s)] * 2)
                           for s in sigmas]
    energy = torch.stack([high_frequency_energy(c) for c in candidates])  # (1 + len(sigmas), N)
    best = (energy.clamp_min(1e-12).log() - target.clamp_min(1e-12).log()).abs().argmin(0)
    chosen = torch.stack(candidates)[best, torch.arange(flat.shape[0])]
    return chosen.reshape(frames.shape)


def with_grasp_check(run: dict[str, torch.Tensor], tolerance: float, height: float) -> torch.Tensor:
    """Imagined success with the grasp check applied afterwards: solved, and the last grasp
    (if any) within ``tolerance`` in x-y of the object's start and at most ``height`` above it."""
    aimed = aimed_grasp(run["eef_imagined"], run["object"], tolerance, height)
    return run["imagined"] & (aimed | run["eef_imagined"][:, 0].isnan())


def rows(run: dict[str, torch.Tensor], tolerances: list[float], height: float) -> list[dict]:
    out = []
    for tolerance in [None] + tolerances:
        success = run["imagined"] if tolerance is None else with_grasp_check(run, tolerance, height)
        a = agreement(run["replayed"].tolist(), success.tolist())
        hit = run["replayed"][success]
        out.append({"tolerance": tolerance, "imagined": success.float().mean().item(),
                    "precision": hit.float().mean().item() if len(hit) else float("nan"),
                    "phi": a["phi"], "phi_ci95": a["phi_ci95"]})
    return out


def grasp_frames(run: dict[str, torch.Tensor], grasped: torch.Tensor) -> str:
    """What the imagined frames show at the last grasp against what physics' frames after the same
    actions show, both read by the probe (so its own error on real frames cancels in the
    difference), and the same for physics' frames blurred to the imagined sharpness (what blur alone
    does to the reading); in mm, mean over grasps."""
    imagined, real, blurred = (run[k][grasped] for k in ("probed", "probed_physics", "probed_blurred"))
    cube = slice(keys.STATE_DIM, keys.STATE_DIM + 3)  # the first object's position in the probe's output
    mm = lambda x: f"{1000 * x.mean():+.1f}"
    away = lambda x: f"{1000 * x.norm(dim=1).mean():.1f}"
    above = lambda x: mm(x[:, 2] - x[:, cube][:, 2])

    def minus_physics(x: torch.Tensor) -> str:
        """Signed means (biases) x / y / z, and the mean x-y distance (bias and scatter: two probe
        readings of frames that show the same state differ by its noise, about 13 mm in x-y)."""
        relative = lambda y: y[:, cube] - y[:, :3]  # where the cube is, seen from the gripper
        both = lambda a, b: (f"{'/'.join(mm(a[:, i] - b[:, i]) for i in range(3))} "
                             f"(x-y {away(a[:, :2] - b[:, :2])} apart)")
        return (f"end effector x/y/z {both(x, real)}; cube {both(x[:, cube], real[:, cube])}; "
                f"cube seen from the gripper {both(relative(x), relative(real))}")

    return (f"at the grasp, probe readings minus its reading of physics' frames after the same actions: imagined "
            f"frames: {minus_physics(imagined)}; physics' frames blurred to the imagined sharpness (the probe's blur "
            f"bias): {minus_physics(blurred)}. Gripper above the cube: imagined frames {above(imagined)}, blurred "
            f"physics' frames {above(blurred)}, physics' frames {above(real)}, physics "
            f"{mm(run['eef_physics'][grasped, 2] - run['object'][grasped, 2])}; the state head's z minus physics' "
            f"{mm(run['eef_imagined'][grasped, 2] - run['eef_physics'][grasped, 2])}")


def paired_envs(policy_path: Path, world_model: Path, progress: Path, episodes: int, seed: int, num_envs: int,
                stats_root: Path | None = None):
    """A saved policy, a Lift physics env at its views and size, and the imagined env started from the
    same physics starts (seeds ``seed`` on); and the physics config, for a second env that runs past
    success (``terminate_on_success=False``, what ``physics_then_imagined`` needs)."""
    from eval.policy import matched_starts
    from policy import camera_views, load_policy
    from simulator.env import ImaginedEnv
    from simulator.physics.env import PhysicsEnv, PhysicsEnvConfig

    policy = load_policy(policy_path, num_envs=num_envs)
    views, size = camera_views(policy)
    physics_cfg = PhysicsEnvConfig(task="lift", num_envs=num_envs, views=views, height=size, width=size)
    physics = PhysicsEnv(physics_cfg)
    starts = matched_starts("lift", views, size, episodes, seed, num_envs)
    imagined = ImaginedEnv.from_pretrained(world_model, progress, starts, views, stats_root=stats_root,
                                           num_envs=num_envs, max_steps=physics.max_steps)
    return policy, physics, imagined, physics_cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True)
    parser.add_argument("--world-model", type=Path, required=True)
    parser.add_argument("--progress", type=Path, required=True)
    parser.add_argument("--stats-root", type=Path, default=None, help="dataset statistics, for older world models")
    parser.add_argument("--episodes", type=int, default=60, help="per mode")
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=100_000, help="physics seed of start 0")
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.015, 0.02, 0.025, 0.03])
    parser.add_argument("--grasp-height", type=float, default=0.02)
    parser.add_argument("--probe", type=Path, default=None,
                        help="a saved state probe: the end effector and the cube read at the grasp from the imagined "
                             "frames and from physics' frames after the same actions")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/imagined_replay"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    from dataclasses import replace

    from eval.probe import StateProbe
    from simulator.physics.env import PhysicsEnv

    t0 = time.perf_counter()
    policy, physics, imagined, physics_cfg = paired_envs(args.policy, args.world_model, args.progress, args.episodes,
                                                         args.seed, args.num_envs, args.stats_root)
    views = imagined.views
    probe = StateProbe.from_pretrained(args.probe).eval() if args.probe is not None else None
    args.output_dir.mkdir(parents=True, exist_ok=True)
    header = ("| policy acting | episodes | imagined success | replayed in physics | grasp check (x-y) | imagined success "
              "with it | replayed success of those (precision) | phi with the replay [95% CI] |")
    lines = [header, "|" + "---|" * 8]
    errors = []
    for mode in ("stochastic", "deterministic"):
        policy.stochastic = mode == "stochastic"
        run = imagine_and_replay(policy, imagined, physics, args.episodes, args.seed, probe)
        torch.save(run, args.output_dir / f"{mode}.pt")
        table = rows(run, args.tolerances, args.grasp_height)
        (args.output_dir / f"{mode}.json").write_text(json.dumps(table, indent=1))
        for r in table:
            check = "none" if r["tolerance"] is None else f"{100 * r['tolerance']:g} cm"
            lines.append(f"| {mode} | {args.episodes} | {run['imagined'].float().mean():.2f} | "
                         f"{run['replayed'].float().mean():.2f} | {check} | {r['imagined']:.2f} | {r['precision']:.2f} | "
                         f"{r['phi']:+.2f} [{r['phi_ci95'][0]:+.2f}, {r['phi_ci95'][1]:+.2f}] |")
        grasped = ~run["eef_imagined"][:, 0].isnan() & ~run["eef_physics"][:, 0].isnan()
        gap = (run["eef_imagined"][grasped] - run["eef_physics"][grasped]) * 1000
        aim = [(run[k][grasped, :2] - run["object"][grasped, :2]).norm(dim=1) for k in ("eef_imagined", "eef_physics")]
        errors.append(f"{mode}: over {int(grasped.sum())} grasps, the predicted end effector is "
                      f"{gap.norm(dim=1).mean():.1f} mm from physics' (x-y {gap[:, :2].norm(dim=1).mean():.1f} mm); "
                      f"its x-y distance to the object correlates with physics' at "
                      f"{torch.corrcoef(torch.stack(aim))[0, 1]:.2f}")
        if probe is not None:
            errors.append(f"{mode}: {grasp_frames(run, grasped)}")
    physics.close()
    policy.stochastic = False  # as in evaluation
    through = PhysicsEnv(replace(physics_cfg, terminate_on_success=False))
    errors.append(open_loop_summary(physics_then_imagined(policy, imagined, through, args.episodes, args.seed),
                                    OPEN_LOOP_HORIZONS, views))
    through.close()
    table = "\n".join(lines)
    print(table, *errors, sep="\n")
    if args.no_write:
        return
    write_section("Imagined outcomes against the same actions replayed in physics", command(), "\n\n".join([
        (f"Policy `{args.policy}`; world model `{args.world_model}`, progress model `{args.progress}`. {args.episodes} "
         f"imagined episodes per mode from matched physics starts (seeds {args.seed} on); each one's actions replayed "
         f"open loop in physics from the same start. Grasp check: the last grasp's predicted end effector within the "
         f"tolerance (x-y) of the cube's start and at most {100 * args.grasp_height:g} cm above it. The other "
         f"direction: the policy (deterministic) run in physics to the step limit, its actions imagined open loop. "
         f"{(time.perf_counter() - t0) / 60:.0f} min in all."),
        table, "\n".join(f"- {e}" for e in errors)]))


if __name__ == "__main__":
    main()
