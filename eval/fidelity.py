"""World-model fidelity on held-out episodes: open-loop rollouts driven by the recorded actions,
PSNR and SSIM at every horizon step against the copy-last-frame baseline, a per-horizon plot and
strips of real vs imagined frames.

    reverie-eval world_model --model outputs/world_model/model --dataset.root outputs/demo/dataset

Sharpness: the high-frequency energy of each view's frames (``high_frequency_energy``, the mean
squared Laplacian), imagined over real at every horizon step; a blurred prediction scores below 1
however close its PSNR (copy-last, which repeats a real frame, scores about 1).

A state probe (eval.probe), trained on real frames of training episodes, reads the end effector
from imagined and from real frames: its error on imagined frames against its error on real ones
measures whether the model moved the arm where the actions said.

Dimension legend: B starts, V views, N chunks, F frames per chunk, T = N*F horizon frames,
K probed values.
Frames past an episode's end are not scored (the count per horizon is reported).
"""

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.clips import ClipDataset, DatasetConfig
from simulator import keys
from simulator.env import load_normalizer
from simulator.world_model import STILL_THRESHOLD, WorldModel, WorldModelSampler
from simulator.world_model.objective import to_model_range

log = logging.getLogger(__name__)


@dataclass
class EvalWorldModelConfig:
    model: Path = Path("outputs/world_model/model")  # the world model (reverie-train world_model)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # the split training used
    horizon_frames: int = 32  # T predicted frames per rollout (rounded up to whole chunks)
    starts: int = 64  # rollouts, from start frames spread over the held-out episodes
    # 1 step is the model's deterministic prediction (the best PSNR/SSIM, docs/benchmarks.md); more
    # steps add sampled detail and make several samples differ (the uncertainty needs >= 2).
    sampling_steps: int = 1
    # Predicted pixels within this of the last context frame keep its value ([0, 1] intensity;
    # simulator.world_model.sampler; 0 = off). 8/255, chosen on run 5 and checked on run 3 (docs/benchmarks.md).
    still_threshold: float = STILL_THRESHOLD
    batch_size: int = 16  # rollouts imagined together
    probe: Path | None = None  # a saved StateProbe; None = train one on episodes before the held-out ones
    probe_steps: int = 1500  # training steps of that probe (0: no probe)
    probe_train_episodes: int = 60  # the training episodes it learns from, those just before the held-out ones
    output_dir: Path = Path("outputs/world_model_eval")  # fidelity.json, fidelity.md, the figures
    seed: int = 0  # of the sampling noise

    def __post_init__(self):
        self.dataset.require()
        self.output_dir, self.model = Path(self.output_dir), Path(self.model)
        self.probe = Path(self.probe) if self.probe is not None else None


@dataclass
class FidelityResult:
    horizon: list[int]  # 1..T
    count: list[int]  # scored rollouts per horizon step
    psnr: list[float]
    psnr_copy_last: list[float]
    ssim: list[float]
    ssim_copy_last: list[float]
    eef_error: list[float] | None = None  # probe's end-effector error (m) on imagined frames
    eef_error_real: list[float] | None = None  # ... on the real frames at the same steps (the probe's own error)
    # Action sensitivity: Pearson correlation, per axis x, y, z, between the commanded end-effector
    # displacement of the first chunks (sum of the position actions) and the displacement the probe
    # reads: on imagined frames (recorded and other episodes' action chunks from the same context),
    # and on real frames (recorded actions: the reference physics gives).
    sensitivity: list[float] | None = None
    sensitivity_real: list[float] | None = None
    sensitivity_frames: int | None = None  # frames after the start at which displacement is read
    # Object lift: over the rollouts in which the first object really rises more than 2 cm, its
    # mean rise (m) over the horizon: true, read by the probe on real frames, and on imagined ones.
    object_rise: dict | None = None
    # Per view, per horizon step: high-frequency energy of the imagined frames over the real ones',
    # and of the copy-last baseline over the real ones'.
    sharpness: dict[str, list[float]] | None = None
    sharpness_copy_last: dict[str, list[float]] | None = None
    # Per horizon step: the world model's own predicted finger positions against the real ones (m,
    # mean of both fingers): whether its state head tells fingers closing on the cube from fingers
    # closing on air, which the next chunk's frames are conditioned on.
    finger_error: list[float] | None = None
    # Per horizon step: the distance (m) of the state head's end effector from the real one: where the
    # pose inputs draw the arm, and the proprioception a policy reads in imagination.
    eef_error_state: list[float] | None = None
    # Per horizon step, signed (m): the end effector's height in the imagined frames minus in the real
    # ones, both read by the probe (positive: the frames show the arm higher; its blur bias included,
    # benchmarks.imagined_replay measures that), and the state head's height minus the true one. The
    # frames lagging a descent that the state head follows is what a policy acting on both meets.
    eef_z_frames: list[float] | None = None
    eef_z_state: list[float] | None = None

    def to_markdown(self, every: int = 4) -> str:
        probe = self.eef_error is not None
        rows = ["| horizon (frames) | PSNR model | PSNR copy-last | SSIM model | SSIM copy-last |"
                + (" probe eef error imagined / real (mm) |" if probe else "") + " rollouts |",
                "|---|---|---|---|---|" + ("---|" if probe else "") + "---|"]
        for i, h in enumerate(self.horizon):
            if h == 1 or h % every == 0:
                eef = f" {1000 * self.eef_error[i]:.1f} / {1000 * self.eef_error_real[i]:.1f} |" if probe else ""
                rows.append(f"| {h} | {self.psnr[i]:.2f} | {self.psnr_copy_last[i]:.2f} | {self.ssim[i]:.3f} | "
                            f"{self.ssim_copy_last[i]:.3f} |{eef} {self.count[i]} |")
        if self.sharpness:
            at = [h for h in (1, 8, 32) if h <= len(self.horizon)] or [len(self.horizon)]
            ratio = lambda v, h: f"{self.sharpness[v][h - 1]:.2f} [{self.sharpness_copy_last[v][h - 1]:.2f}]"
            views = "; ".join(f"{v} " + " / ".join(ratio(v, h) for h in at) for v in self.sharpness)
            rows += ["", (f"Sharpness (high-frequency energy, imagined over real; copy-last in brackets) at horizon "
                          f"{' / '.join(map(str, at))}: {views}")]
        if self.finger_error:
            at = [h for h in (1, 8, 32) if h <= len(self.horizon)] or [len(self.horizon)]
            mm = lambda v: " / ".join(f"{1000 * v[h - 1]:.2f}" for h in at)
            rows += ["", f"State head error (mm) at horizon {' / '.join(map(str, at))}: fingers {mm(self.finger_error)}"
                         + (f", end-effector distance {mm(self.eef_error_state)}" if self.eef_error_state else "")]
        if self.eef_z_state:
            at = [h for h in (1, 8, 16, 32) if h <= len(self.horizon)] or [len(self.horizon)]
            mm = lambda v: " / ".join(f"{1000 * v[h - 1]:+.1f}" for h in at)
            rows += ["", f"End-effector height, imagined minus real (mm) at horizon {' / '.join(map(str, at))}: "
                         + (f"frames (probe) {mm(self.eef_z_frames)}, " if self.eef_z_frames else "")
                         + f"state head {mm(self.eef_z_state)}"]
        if self.object_rise:
            o = self.object_rise
            rows += ["", (f"Object rise over the horizon in the {o['rollouts']} rollouts where it is lifted (mm): "
                         f"true {1000 * o['true']:.0f}, probe on real frames {1000 * o['probe_real']:.0f}, "
                         f"probe on imagined frames {1000 * o['probe_imagined']:.0f}")]
        if self.sensitivity is not None:
            axes = lambda c: " / ".join(f"{x:.2f}" for x in c)
            rows += ["", (f"Action sensitivity (correlation of commanded and probed end-effector displacement "
                         f"x / y / z after {self.sensitivity_frames} frames): imagined {axes(self.sensitivity)}, "
                         f"real {axes(self.sensitivity_real)}")]
        return "\n".join(rows)


PSNR_CAP = 60.0  # dB: identical frames (infinite PSNR) score this, so means stay finite


def per_frame_scores(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR (capped at PSNR_CAP) and SSIM of (..., 3, h, w) frames in [0, 1], one value per frame."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    p, t = pred.reshape(-1, *pred.shape[-3:]).float(), target.reshape(-1, *target.shape[-3:]).float()
    psnr = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
    return psnr.clamp(max=PSNR_CAP).reshape(pred.shape[:-3]), ssim.reshape(pred.shape[:-3])


def high_frequency_energy(frames: torch.Tensor) -> torch.Tensor:
    """(..., 3, h, w) frames -> (...): the mean squared response of the 3x3 Laplacian over channels
    and interior pixels, the fine detail a blurred frame lacks (0 for a flat frame)."""
    laplacian = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    x = frames.reshape(-1, 1, *frames.shape[-2:]).float()  # every channel of every frame
    response = torch.nn.functional.conv2d(x, laplacian.view(1, 1, 3, 3))
    return response.square().mean((1, 2, 3)).view(*frames.shape[:-3], frames.shape[-3]).mean(-1)


def rollout_starts(clips: ClipDataset, n: int) -> list[int]:
    """``n`` clip indices spread evenly over the held-out frames whose whole horizon lies inside
    their episode, so that every horizon step scores the same rollouts."""
    cfg = clips.config
    length = {ep: end - first for ep in clips.episodes for first, end in [clips.episode_range(ep)]}
    full = [i for i in range(len(clips)) if int(clips.frame_of[i]) + cfg.horizon < length[int(clips.episode_of[i])]]
    if not full:
        raise ValueError(f"no held-out episode is longer than the horizon ({cfg.horizon} steps): "
                         f"evaluate a shorter --horizon_frames")
    return [full[i] for i in np.linspace(0, len(full) - 1, n).round().astype(int)] if n < len(full) else full


def evaluate(cfg: EvalWorldModelConfig) -> tuple[FidelityResult, dict]:
    """Open-loop rollouts of the recorded actions from held-out start frames."""
    model = WorldModel.from_pretrained(cfg.model).eval()
    spec = model.spec
    stride = spec.horizon // spec.future  # the frame stride the model was trained with
    chunks = -(-cfg.horizon_frames // spec.future)
    train_episodes, held_out = cfg.dataset.split()
    clips = cfg.dataset.clips(held_out, context=spec.context, horizon=chunks * spec.horizon, stride=stride)
    # The model's inputs normalised as in its training (the statistics saved beside it), not with
    # this dataset's: another dataset's action spread would move the imagined arm by other distances.
    clips.normalize_with(load_normalizer(cfg.model, cfg.dataset.root))
    if len(clips.views) != spec.views:
        raise ValueError(f"the model was trained on {spec.views} views, the dataset gives {len(clips.views)}: {clips.views}")
    probe = get_probe(cfg, train_episodes)
    sampler = WorldModelSampler(model, num_steps=cfg.sampling_steps, still_threshold=cfg.still_threshold)
    gen = torch.Generator().manual_seed(cfg.seed)
    T = chunks * spec.future
    sums = {k: torch.zeros(T) for k in ("psnr", "psnr_copy_last", "ssim", "ssim_copy_last", "eef_error", "eef_error_real",
                                        "finger_error", "eef_error_state", "eef_z_frames", "eef_z_state")}
    fingers = [keys.STATE_NAMES.index(n) for n in ("finger_l", "finger_r")]
    eef_z = keys.STATE_NAMES.index("eef_z")
    eef = [keys.STATE_NAMES.index(n) for n in ("eef_x", "eef_y", "eef_z")]
    count = torch.zeros(T)
    energy = {k: torch.zeros(spec.views, T) for k in ("imagined", "copy_last", "real")}  # masked sums, (V, T)
    examples, moves, rises = None, [], {}
    sens_chunks = min(2, chunks)  # action sensitivity is read over the first (up to) 2 chunks
    starts = rollout_starts(clips, cfg.starts)
    for i in tqdm(range(0, len(starts), cfg.batch_size), desc="world-model rollouts"):
        batch = torch.utils.data.default_collate([clips[j] for j in starts[i:i + cfg.batch_size]])
        actions = batch["action"].reshape(-1, chunks, spec.horizon, spec.action_dim)
        memory = to_model_range(batch["first"]) if spec.memory else None
        pred = sampler.rollout(to_model_range(batch["context"]), actions, batch["context_state"], generator=gen,
                               memory=memory)
        imagined = (pred.frames + 1) / 2  # (B, V, T, 3, h, w)
        real, mask = batch["future"], batch["future_mask"]  # (B, V, T, ...), (B, T)
        copy_last = batch["context"][:, :, -1:].expand_as(real)
        for name, guess in (("", imagined), ("_copy_last", copy_last)):
            psnr, ssim = per_frame_scores(guess, real)  # (B, V, T)
            sums["psnr" + name] += torch.where(mask, psnr.mean(1), 0.0).sum(0)
            sums["ssim" + name] += torch.where(mask, ssim.mean(1), 0.0).sum(0)
        count += mask.float().sum(0)
        state_gap = (clips.normalizer.unnormalize(keys.STATE, pred.state)
                     - clips.normalizer.unnormalize(keys.STATE, batch["future_state"]))  # (B, T, S) predicted - real
        sums["finger_error"] += torch.where(mask, state_gap[..., fingers].abs().mean(-1), 0.0).sum(0)
        sums["eef_z_state"] += torch.where(mask, state_gap[..., eef_z], 0.0).sum(0)
        sums["eef_error_state"] += torch.where(mask, state_gap[..., eef].norm(dim=-1), 0.0).sum(0)
        for name, frames in (("imagined", imagined), ("copy_last", copy_last), ("real", real)):
            energy[name] += torch.where(mask[:, None], high_frequency_energy(frames), 0.0).sum(0)
        if probe is not None:
            truth = torch.cat([clips.normalizer.unnormalize(keys.STATE, batch["future_state"]), batch["future_env_state"]], -1)
            probed = {"imagined": probe_frames(probe, imagined), "real": probe_frames(probe, real)}
            for name, values in (("eef_error", probed["imagined"]), ("eef_error_real", probed["real"])):
                err = (values - truth)[..., :3].abs().mean(-1)  # (B, T) metres
                sums[name] += torch.where(mask, err, 0.0).sum(0)
            lag = probed["imagined"][..., eef_z] - probed["real"][..., eef_z]  # the probe reads the state first
            sums["eef_z_frames"] += torch.where(mask, lag, 0.0).sum(0)
            moves.append(displacements(probe, clips, sampler, batch, probed, gen, sens_chunks))
            z = batch["future_state"].shape[-1] + 2  # the first object's height in the probe's output
            true_z = batch["future_env_state"][..., 2]
            lifted = (true_z.max(1).values - true_z[:, 0]) > 0.02
            for name, values in (("true", true_z), ("probe_real", probed["real"][..., z]),
                                 ("probe_imagined", probed["imagined"][..., z])):
                rises.setdefault(name, []).append((values[:, -1] - values[:, 0])[lifted & mask.all(1)])
        if examples is None:
            examples = {"real": real[:4], "imagined": imagined[:4]}
    mean = {k: (v / count.clamp_min(1)).tolist() for k, v in sums.items()}
    if probe is None:
        mean["eef_error"] = mean["eef_error_real"] = mean["eef_z_frames"] = None
    result = FidelityResult(horizon=list(range(1, T + 1)), count=count.int().tolist(), **mean)
    real_energy = energy["real"].clamp_min(1e-12)
    result.sharpness, result.sharpness_copy_last = (
        {v: (energy[name][i] / real_energy[i]).tolist() for i, v in enumerate(clips.views)}
        for name in ("imagined", "copy_last"))
    if rises and len(torch.cat(rises["true"])):
        result.object_rise = {"rollouts": len(torch.cat(rises["true"]))} | {
            k: torch.cat(v).mean().item() for k, v in rises.items()}
    if moves:
        commanded, imagined_moves, real_moves = (torch.cat(m) for m in zip(*moves))
        recorded = commanded[:, 0]  # (N, 3): the recorded chunks, the ones real frames exist for
        result.sensitivity = correlation(commanded.flatten(0, 1), imagined_moves.flatten(0, 1)).tolist()
        result.sensitivity_real = correlation(recorded, real_moves).tolist()
        result.sensitivity_frames = sens_chunks * spec.future
    return result, examples


def correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the columns of x and y, (N, D) each -> (D,). A column that does not
    vary (standard deviation under 1e-6: a micrometre of displacement, float round-off) has none: 0."""
    x, y = x - x.mean(0), y - y.mean(0)
    sx, sy = x.square().mean(0).sqrt(), y.square().mean(0).sqrt()
    r = (x * y).mean(0) / (sx * sy).clamp_min(1e-30)
    return torch.where((sx > 1e-6) & (sy > 1e-6), r, 0.0)


def displacements(probe, clips: ClipDataset, sampler: WorldModelSampler, batch: dict, probed: dict,
                  gen: torch.Generator, chunks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """End-effector displacements (metres, x/y/z) over the first ``chunks`` chunks from each start.

    Returns commanded (B, 2, 3): the sum of the position actions, of the recorded chunks [:, 0]
    and of chunks taken from the previous start in the batch [:, 1] (other motions from the same
    context); imagined (B, 2, 3): what the probe reads on the imagined frames for both; real
    (B, 3): what it reads on the real frames (recorded actions only). Displacement = probed
    position at the end minus probed position on the last real context frame.
    """
    spec = sampler.model.spec
    H, F = spec.horizon, spec.future
    B = batch["action"].shape[0]
    start = probe_frames(probe, batch["context"][:, :, -1:])[:, 0, :3]  # (B, 3)
    recorded = batch["action"][:, :chunks * H]
    other = recorded.roll(1, dims=0)  # another start's chunk: a different motion, still in-distribution
    pred = sampler.rollout(to_model_range(batch["context"]), other.reshape(B, chunks, H, -1), batch["context_state"],
                           generator=gen, memory=to_model_range(batch["first"]) if spec.memory else None)
    moved_other = probe_frames(probe, (pred.frames[:, :, -1:] + 1) / 2)[:, 0, :3]
    end = chunks * F - 1
    commanded = clips.normalizer.unnormalize(keys.ACTION, torch.stack([recorded, other], 1))[..., :3].sum(2)
    imagined = torch.stack([probed["imagined"][:, end, :3], moved_other], 1) - start[:, None]
    real = probed["real"][:, end, :3] - start
    return commanded, imagined, real


def get_probe(cfg: EvalWorldModelConfig, train_episodes: list[int]):
    """The state probe: loaded, or trained on real frames of the last training episodes."""
    from eval.probe import ProbeConfig, StateProbe, load_frames, train_probe

    if cfg.probe is not None:
        return StateProbe.from_pretrained(cfg.probe).eval()
    if cfg.probe_steps <= 0:
        return None
    episodes = train_episodes[-cfg.probe_train_episodes:]
    probe_cfg = ProbeConfig(steps=cfg.probe_steps)
    frames, targets = load_frames(cfg.dataset.clips(episodes, context=1, horizon=1), episodes, every=probe_cfg.frame_every)
    probe = train_probe(frames, targets, probe_cfg)
    probe.save_pretrained(cfg.output_dir / "probe")
    return probe


@torch.no_grad()
def probe_frames(probe, frames: torch.Tensor) -> torch.Tensor:
    """(B, V, T, 3, h, w) frames in [0, 1] -> (B, T, K) probed values."""
    B, V, T = frames.shape[:3]
    return probe(frames.transpose(1, 2).reshape(B * T, V, *frames.shape[3:])).reshape(B, T, -1)


def save_report(result: FidelityResult, examples: dict, cfg: EvalWorldModelConfig) -> Path:
    """fidelity.json, fidelity.md, fidelity.png (per-horizon curves), strips.png (real over imagined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "fidelity.json").write_text(json.dumps({"config": asdict(cfg), "result": asdict(result)}, indent=1, default=str))
    (out / "fidelity.md").write_text(result.to_markdown() + "\n")
    panels = [("psnr", "PSNR (dB)", "_copy_last", "copy last frame"), ("ssim", "SSIM", "_copy_last", "copy last frame")]
    if result.eef_error is not None:
        panels.append(("eef_error", "probe end-effector error (m)", "_real", "probe on real frames"))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5 * (len(panels) + 1), 3.5))
    for ax, (key, label, other, other_label) in zip(axes, panels):
        ax.plot(result.horizon, getattr(result, key), label="world model")
        ax.plot(result.horizon, getattr(result, key + other), "--", label=other_label)
        ax.set_ylabel(label)
    for v in result.sharpness or {}:
        line, = axes[-1].plot(result.horizon, result.sharpness[v], label=f"{v}: world model")
        axes[-1].plot(result.horizon, result.sharpness_copy_last[v], "--", color=line.get_color(), label=f"{v}: copy last")
    axes[-1].set_ylabel("sharpness, imagined / real")
    for ax in axes:
        ax.set_xlabel("horizon (predicted frames)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "fidelity.png", dpi=120)
    plt.close(fig)
    # Strips: per example and view, a row of real frames above a row of imagined ones.
    real, imagined = examples["real"], examples["imagined"]
    T = real.shape[2]
    cols = list(range(0, T, max(1, T // 8)))[:8]
    rows = []
    for b in range(real.shape[0]):
        for v in range(real.shape[1]):
            for frames in (real, imagined):
                rows.append(torch.cat([frames[b, v, t] for t in cols], dim=-1))
    grid = (torch.cat(rows, dim=-2).permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(out / "strips.png")
    return out


def main(cfg: EvalWorldModelConfig) -> Path:
    result, examples = evaluate(cfg)
    out = save_report(result, examples, cfg)
    print(result.to_markdown())
    log.info("report in %s", out)
    return out
