"""Imagined frames per second beside physics frames per second, measured in the same run.

    python -m benchmarks.world_model_speed [--model outputs/world_model/model]

A "frame" is one time step with every view (two 64x64 views on Lift). Physics: PhysicsEnv steps
with both views rendered (fast render). Imagination: WorldModelSampler.sample on a batch, each
chunk giving F frames per rollout. Speed does not depend on the weights, so without --model a
freshly initialised model of the default (CPU) configuration is timed.

With ``--model`` and ``--progress``, ``--history 1 2`` also times the per-step env that
``lerobot-eval --env.type=reverie`` steps (``simulator.lerobot_env.ImaginedVectorEnv``, one action
at a time, progress model included): a policy with 2 observation steps makes it peek once a chunk,
one more world-model call.
"""

import argparse
import time

import torch

from benchmarks._report import command, write_section
from simulator.physics import PhysicsEnv, PhysicsEnvConfig
from simulator.world_model import STILL_THRESHOLD, WorldModel, WorldModelSampler


def physics_fps(steps: int) -> float:
    env = PhysicsEnv(PhysicsEnvConfig(task="lift", views=("front", "wrist")))
    env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    env.step(torch.zeros(1, 1, 7))  # warm-up
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        _, _, term, trunc, _ = env.step(torch.rand(1, 8, 7, generator=gen) * 2 - 1)
        done += 8
        if term.any() or trunc.any():
            env.reset()
    fps = done / (time.perf_counter() - t0)
    env.close()
    return fps


def imagined_fps(model: WorldModel, batch: int, steps: int, repeats: int, guidance: float = 1.0) -> float:
    s = model.spec
    sampler = WorldModelSampler(model.eval(), num_steps=steps, still_threshold=STILL_THRESHOLD,
                                action_guidance=guidance)  # as the imagined env samples
    context = torch.rand(batch, s.views, s.context, 3, s.image_size, s.image_size) * 2 - 1
    actions, state = torch.randn(batch, s.horizon, s.action_dim), torch.randn(batch, s.context, s.state_dim)
    memory = context[:, :, 0] if s.memory else None
    sampler.sample(context, actions, state, memory=memory)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        sampler.sample(context, actions, state, memory=memory)
    return repeats * batch * s.future / (time.perf_counter() - t0)


def per_step_env_fps(model: str, progress: str, batch: int, history: int, chunks: int) -> float:
    """Frames/s of lerobot-eval's imagined env stepped one action at a time for a policy that reads
    ``history`` observation steps (starts from physics resets, zero actions)."""
    import numpy as np

    from simulator.lerobot_env import ReverieEnvConfig

    env = ReverieEnvConfig(world_model=model, progress=progress).make_vector_env(batch, history)
    env.reset(seed=0)
    actions = np.zeros(env.action_space.shape, np.float32)
    env.step(actions)  # warm-up, then whole chunks from the next chunk boundary
    for _ in range(env.chunk - 1):
        env.step(actions)
    t0 = time.perf_counter()
    for _ in range(chunks * env.chunk):
        env.step(actions)
    return chunks * env.chunk * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch", type=int, nargs="+", default=[32])
    parser.add_argument("--sampling-steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--action-guidance", type=float, nargs="+", default=[1.0],
                        help="classifier-free guidance on the actions (1: none; otherwise two model calls a step)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--progress", default=None, help="a saved progress model: with --model, times --history")
    parser.add_argument("--history", type=int, nargs="*", default=[],
                        help="observation steps of a policy in lerobot-eval's per-step env (2: one peek a chunk)")
    parser.add_argument("--physics-steps", type=int, default=400)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.history and not (args.model and args.progress):
        parser.error("--history times the per-step env of saved models: give --model and --progress")
    model = WorldModel.from_pretrained(args.model) if args.model else WorldModel()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    phys = physics_fps(args.physics_steps)
    rows = ["| what | frames/s | vs physics |", "|---|---|---|", f"| physics, 1 env, 2 views rendered | {phys:.0f} | 1.0x |"]
    print(rows[-1], flush=True)
    for b in args.batch:
        for k in args.sampling_steps:
            for w in args.action_guidance:
                with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                    fps = imagined_fps(model, b, k, args.repeats, w)
                guided = f", action guidance {w:g}" if w != 1 else ""
                rows.append(f"| world model on {device}, batch {b}, {k} sampling steps{guided} | {fps:.0f} "
                            f"| {fps / phys:.1f}x |")
                print(rows[-1], flush=True)
    for h in args.history:
        fps = per_step_env_fps(args.model, args.progress, args.batch[0], h, args.repeats)
        rows.append(f"| lerobot-eval's per-step env, batch {args.batch[0]}, policy history {h}, 1 sampling step "
                    f"| {fps:.0f} | {fps / phys:.1f}x |")
        print(rows[-1], flush=True)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    s = model.spec
    memory = ", memory of the start frame" if s.memory else ""
    body = (f"World model: {params:.1f}M parameters, {s.views} views at {s.image_size}x{s.image_size}, {s.future} frames "
            f"per chunk{memory}. Target on the CPU: at least 2x physics.\n\n" + "\n".join(rows))
    if not args.no_write:
        write_section("Imagined vs physics frames per second", command(), body)


if __name__ == "__main__":
    main()
