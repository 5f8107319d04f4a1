"""World-model fidelity on held-out episodes, and its quality against the sampler's settings.

    python -m benchmarks.world_model_fidelity --model outputs/world_model/model \
        --root outputs/demo/dataset --val-episodes 20 --sampling-steps 1 2 4 --still-levels 8 0

Runs ``reverie-eval world_model`` (eval.fidelity) once per setting (number of sampling steps x
still-pixel threshold), all with the same state probe and the same rollout starts. The first of
each list is the default and gets the full table, the per-horizon plot and strips of real vs
imagined frames (copied to docs/figures/); the others give the quality-vs-settings table and plot
(settings.png in --output-dir). The training command and time are read from the run folder (the
model's parent: train_config.json, metrics.jsonl).
"""

import argparse
import itertools
import json
import shutil
import time
from pathlib import Path

from benchmarks._report import DOC, command, write_section
from data.clips import DatasetConfig
from eval.fidelity import EvalWorldModelConfig, evaluate, save_report

FIGURES = DOC.parent / "figures"


def training_summary(model: Path) -> str:
    """How the model was trained, from its run folder (when it has one)."""
    run = model.parent
    config, metrics = run / "train_config.json", run / "metrics.jsonl"
    if not config.exists() or not metrics.exists():
        return f"Model: `{model}` (no training record beside it)."
    cfg = json.loads(config.read_text())
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    last = records[-1]
    minutes = f", {last['time_s'] / 60:.0f} min of training" if "time_s" in last else ""
    o = cfg["objective"]
    return (f"Model: `{model}`: {last['step']} steps of {cfg['batch_size']} clips{minutes}; frame stride "
            f"{cfg['frame_stride']}, unroll {o['unroll_chunks']} chunks, logit-normal noise levels "
            f"({o['logit_mean']}, {o['logit_std']}), lr {cfg['lr']}. Final training loss {last['loss']:.4f}.")


HORIZONS = (1, 8, 16, 32)


def label(steps: int, still: float) -> str:
    return f"{steps} sampling step{'s' if steps > 1 else ''}, still threshold " + (f"{still * 255:.0f}/255" if still else "off")


def gap_table(results: dict) -> list[str]:
    """One row per sampler setting: model minus copy-last at a few horizons, the probe's
    error ratio at 8 frames, the action sensitivity and the evaluation time."""
    first = next(iter(results.values()))[0]
    hs = [h for h in HORIZONS if h in first.horizon]
    rows = ["| sampling steps, still threshold | " + " | ".join(f"PSNR gap at {h} (dB)" for h in hs) + " | "
            + " | ".join(f"SSIM gap at {h}" for h in hs) + " | probe eef error imagined / real at 8 | "
            "action sensitivity x / y / z | eval time (s) |",
            "|---" * (2 * len(hs) + 4) + "|"]
    for k, (r, seconds) in results.items():
        gaps = [f"{r.psnr[h - 1] - r.psnr_copy_last[h - 1]:+.2f}" for h in hs]
        gaps += [f"{r.ssim[h - 1] - r.ssim_copy_last[h - 1]:+.3f}" for h in hs]
        h8 = min(8, len(r.horizon)) - 1
        probe = f"{r.eef_error[h8] / r.eef_error_real[h8]:.2f}x" if r.eef_error is not None else "-"
        sens = " / ".join(f"{c:.2f}" for c in r.sensitivity) if r.sensitivity is not None else "-"
        rows.append(f"| {label(*k)} | " + " | ".join(gaps) + f" | {probe} | {sens} | {seconds:.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--val-episodes", type=int, default=20)
    parser.add_argument("--sampling-steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--still-levels", type=int, nargs="+", default=[round(EvalWorldModelConfig.still_threshold * 255)],
                        help="the sampler's still-pixel thresholds in 8-bit levels (of 255; 0 = off)")
    parser.add_argument("--starts", type=int, default=64)
    parser.add_argument("--horizon-frames", type=int, default=32)
    parser.add_argument("--probe", type=Path, default=None, help="a saved probe (default: train one)")
    parser.add_argument("--probe-steps", type=int, default=1000)
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/world_model_fidelity"))
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    dataset = DatasetConfig(root=args.root, val_episodes=args.val_episodes)
    probe, results = args.probe, {}
    for k, levels in itertools.product(args.sampling_steps, args.still_levels):
        still = levels / 255
        cfg = EvalWorldModelConfig(model=args.model, dataset=dataset, starts=args.starts, horizon_frames=args.horizon_frames,
                                   sampling_steps=k, still_threshold=still, probe=probe, probe_steps=args.probe_steps,
                                   output_dir=args.output_dir / f"steps_{k}_still_{levels}")
        t0 = time.perf_counter()
        result, examples = evaluate(cfg)
        results[k, still] = (result, time.perf_counter() - t0)
        save_report(result, examples, cfg)
        if probe is None and args.probe_steps > 0:
            probe = cfg.output_dir / "probe"  # trained once, shared by every setting
        print(f"\n{label(k, still)}:\n{result.to_markdown()}", flush=True)

    default = next(iter(results))
    rows = gap_table(results)
    print("\n" + "\n".join(rows))
    if len(results) > 1:
        plot_steps(results, args.output_dir / "settings.png")
    if args.no_write:
        return
    FIGURES.mkdir(parents=True, exist_ok=True)
    out = args.output_dir / f"steps_{default[0]}_still_{round(default[1] * 255)}"
    for name in ("fidelity.png", "strips.png"):
        shutil.copy(out / name, FIGURES / f"world_model_{name}")
    main_result = results[default][0]
    write_section("World model fidelity", command(), "\n\n".join([
        training_summary(args.model),
        f"Open-loop rollouts of the recorded actions from {main_result.count[0]} start frames of the "
        f"{args.val_episodes} held-out episodes (seeds never trained on), {label(*default)}; every start has its "
        f"whole horizon inside its episode. The probe (a CNN trained on real frames of training episodes) reads the end "
        f"effector from imagined and from real frames.",
        main_result.to_markdown(),
        "![per-horizon fidelity](figures/world_model_fidelity.png)\n\n"
        "Real (upper row) over imagined (lower row) frames, every 4th predicted frame, per start and view:\n\n"
        "![real vs imagined](figures/world_model_strips.png)"]))
    if len(results) == 1:
        return
    shutil.copy(args.output_dir / "settings.png", FIGURES / "world_model_steps.png")
    write_section("World model quality vs sampler settings", command(), "\n\n".join([
        "Differences to copy-last-frame (positive = better than copying the last frame), same model, starts and probe:",
        "\n".join(rows), "![quality vs steps](figures/world_model_steps.png)"]))


def plot_steps(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    first = next(iter(results.values()))[0]
    for ax, key, ylabel in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
        for k, (r, _) in sorted(results.items()):
            ax.plot(r.horizon, getattr(r, key), label=label(*k))
        ax.plot(first.horizon, getattr(first, key + "_copy_last"), "k--", label="copy last frame")
        ax.set_xlabel("horizon (predicted frames)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
