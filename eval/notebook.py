"""Helpers of the notebooks in ``notebooks/``, so that their cells stay a line or two.

- imagined_rollouts.ipynb: held-out episodes, their open-loop re-generation from the recorded
  actions (``eval.report.regenerate``), a policy's own episodes in imagination from the same first
  frames (``imagine_policy``), side by side in a video beside their progress curves (``show_rollouts``);
- interactive_control.ipynb: ``InteractiveImagination``, sliders that set an action chunk and a
  button that imagines it, one chunk at a time;
- policy_evaluation_dashboard.ipynb: the tables and plots of ``policy_eval.json`` (``reverie-eval
  policy``) and ``rl_eval.json`` (``reverie-rl``).

Everything runs on the CPU and needs the ``notebooks`` extra (ipykernel, ipywidgets) only for the
widgets. Dimension legend: B envs, V views, N frames of an episode, H action-chunk length, A
action dim, h x w image size.
"""

from __future__ import annotations

import base64
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from eval.report import demo_dataset, markdown_to_html, side_by_side
from simulator import keys


def _html(text: str):
    from IPython.display import HTML

    return HTML(text)


def _note(text: str):
    return _html(f"<p><i>{text}</i></p>")


def _png_uri(fig) -> str:
    """A matplotlib figure as a data URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _mp4_uri(frames: list[np.ndarray], fps: int) -> str:
    """(H, W, 3) uint8 frames as an H.264 mp4 data URI, embedded in the notebook's output."""
    from simulator.recording import write_mp4

    with tempfile.TemporaryDirectory() as tmp:
        data = write_mp4(Path(tmp) / "clip.mp4", frames, fps).read_bytes()
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


# ---- imagined rollouts --------------------------------------------------------------------

def views_of(progress: Path) -> tuple[str, ...]:
    """The camera views the imagined env renders: the progress model's, as eval.policy does."""
    from simulator.progress import ProgressModel

    return tuple(ProgressModel.from_pretrained(progress).spec.views)


@torch.no_grad()
def imagine_policy(policy: str | Path, world_model: Path, progress: Path, root: Path, episodes: list,
                   task: str = "lift", max_steps: int | None = None, seed: int = 0) -> list[Tensor]:
    """``policy`` (a scripted policy's name or a saved policy's folder, ``policy.load_policy``)
    acting in the imagined env from the first frames of ``episodes`` (data.episodes.Episode).
    Returns each episode's imagined frames (V, N', 3, h, w) uint8, from the start frame until the
    env ends it (success, or ``max_steps``: default the longest real episode)."""
    from policy import load_policy
    from simulator.env import ImaginedEnv
    from simulator.rollout import Rollout
    from simulator.starts import StartFrames

    ids, views = [e.index for e in episodes], views_of(progress)
    clips = demo_dataset(root).clips(ids, context=1, horizon=1, normalize=False, cache_frames=False)
    starts = StartFrames.from_dataset(clips, ids)
    B = len(episodes)
    env = ImaginedEnv.from_pretrained(world_model, progress, starts, views, stats_root=root, num_envs=B,
                                      max_steps=max_steps or max(e.length for e in episodes))
    agent = load_policy(policy, task=task, num_envs=B)
    frames: list[list[Tensor]] = [[] for _ in range(B)]

    def record(info: dict) -> None:
        new = torch.stack([info["frames"][v] for v in views], 1)  # (B, V, F, 3, h, w)
        for b in range(B):
            frames[b].append(new[b][:, info["frames_valid"][b].cpu()])

    rollout = Rollout(env, seed=0)  # env b starts from episode b's first frame
    agent.reset(rollout.obs, rollout.info, seeds=list(range(seed, seed + B)))
    record(rollout.info)
    for step in rollout.run(agent.select_action_chunk):
        record(step.info)
    return [torch.cat(f, 1) for f in frames]


def show_rollouts(episodes: list, runs: dict[str, list[Tensor]], curves: dict[str, list[np.ndarray]] | None,
                  views: tuple[str, ...], fps: int = 20):
    """Per episode, a looping video (rows: views; columns: real, then each of ``runs``: name ->
    frames (V, N', 3, h, w) per episode) beside its progress curves (``eval.report.progress_curves``)."""
    import matplotlib.pyplot as plt

    parts = []
    for i, e in enumerate(episodes):
        clips = {"real": e.frames} | {name: frames[i] for name, frames in runs.items()}
        rows = [side_by_side([c[v] for c in clips.values()], [f"{name} ({view})" for name in clips], scale=3)
                for v, view in enumerate(views)]
        video = [np.concatenate([r[t] for r in rows], 0) for t in range(len(rows[0]))]
        cell = f"<video src='{_mp4_uri(video, fps)}' controls loop muted autoplay></video>"
        if curves is not None:
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            for (name, values), style in zip(curves.items(), ("-", "--", "-.", ":")):
                ax.plot(values[i], style, label=name)
            ax.plot(e.progress.numpy(), ":", color="gray", label="label (real)")
            ax.set(ylim=(-0.05, 1.05), xlabel="frame", ylabel="predicted progress")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            cell += f"<img src='{_png_uri(fig)}'>"
        outcome = "success" if e.success else "failure"
        parts.append(f"<h4>episode {e.index} ({outcome}, {e.length} frames)</h4>"
                     f"<div style='display:flex;gap:1em;align-items:flex-start'>{cell}</div>")
    return _html("\n".join(parts))


# ---- interactive control ------------------------------------------------------------------

class InteractiveImagination:
    """Drive the imagined env by hand: one slider per action dimension sets a constant action
    for the next chunk, ``update`` imagines it (the "imagine" button calls it) and shows the
    chunk's frames and the progress so far. Starts from a held-out episode's first frame."""

    def __init__(self, world_model: Path, progress: Path, root: Path, episode: int | None = None,
                 chunks: int = 1, scale: int = 4):
        import ipywidgets as widgets

        from simulator.env import ImaginedEnv, load_normalizer
        from simulator.starts import StartFrames

        dataset = demo_dataset(root)
        episode = dataset.split()[1][0] if episode is None else episode
        starts = StartFrames.from_dataset(dataset.clips([episode], context=1, horizon=1, normalize=False), [episode])
        self.views, self.scale = views_of(progress), scale
        self.env = ImaginedEnv.from_pretrained(world_model, progress, starts, self.views, stats_root=root,
                                               num_envs=1, max_steps=10_000)
        self.horizon = self.env.world_model.spec.horizon * chunks  # H actions per update
        stats = load_normalizer(world_model, root).stats[keys.ACTION]
        names = keys.ACTION_NAMES if len(stats["min"]) == len(keys.ACTION_NAMES) else range(len(stats["min"]))
        self.sliders = [widgets.FloatSlider(value=float(np.clip(0.0, lo, hi)), min=lo, max=hi, step=(hi - lo) / 100 or 0.01,
                                            description=str(name), continuous_update=False)
                        for name, lo, hi in zip(names, stats["min"], stats["max"])]
        self.frames_view, self.curve_view = widgets.Image(format="png"), widgets.Image(format="png")
        self.status = widgets.Label()
        imagine, reset = widgets.Button(description="imagine chunk"), widgets.Button(description="reset")
        imagine.on_click(self.update)
        reset.on_click(self.reset)
        self.controls = widgets.VBox([*self.sliders, widgets.HBox([imagine, reset]), self.status])
        self.reset()

    def widget(self):
        import ipywidgets as widgets

        return widgets.HBox([self.controls, widgets.VBox([self.frames_view, self.curve_view])])

    def action(self) -> Tensor:
        """(1, H, A): the sliders' action, repeated over the chunk."""
        return torch.tensor([s.value for s in self.sliders], dtype=torch.float32).expand(1, self.horizon, -1).clone()

    def reset(self, _=None) -> None:
        _, info = self.env.reset(seed=0)
        self.ended = False
        self.progress, self.success_prob = [float(info["progress"][0])], [float(info["success_prob"][0])]
        self._show(info, "reset to the start frame")

    def update(self, _=None) -> dict:
        """Imagines one chunk of the sliders' action; returns its progress, success probability
        and frames {view: (F, 3, h, w) uint8}. A finished episode is reset first."""
        if self.ended:
            self.reset()
        _, reward, terminated, truncated, info = self.env.step(self.action())
        self.progress.append(float(info["progress"][0]))
        self.success_prob.append(float(info["success_prob"][0]))
        self.ended = bool(terminated[0] or truncated[0])
        ended = " (solved: the next chunk starts over)" if terminated[0] else " (ended: the next chunk starts over)" if truncated[0] else ""
        self._show(info, f"chunk {len(self.progress) - 1}: reward {float(reward[0]):+.3f}{ended}")
        return {"progress": self.progress[-1], "success_prob": self.success_prob[-1],
                "frames": {v: info["frames"][v][0] for v in self.views}}

    def _show(self, info: dict, what: str) -> None:
        import matplotlib.pyplot as plt
        from PIL import Image

        rows = [side_by_side(list(info["frames"][v][0][:, None]), [f"{v} {t}" for t in range(info["frames"][v].shape[1])],
                             scale=self.scale)[0] for v in self.views]  # (F, 3, h, w) -> frames left to right
        buf = io.BytesIO()
        Image.fromarray(np.concatenate(rows, 0)).save(buf, format="png")
        self.frames_view.value = buf.getvalue()
        fig, ax = plt.subplots(figsize=(4, 2.2))
        ax.plot(self.progress, "o-", label="progress")
        ax.plot(self.success_prob, "s:", label="success probability")
        ax.set(ylim=(-0.05, 1.05), xlabel="chunk")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        self.curve_view.value = base64.b64decode(_png_uri(fig).split(",", 1)[1])
        self.status.value = f"{what}; progress {self.progress[-1]:.2f}, success probability {self.success_prob[-1]:.2f}"


# ---- policy evaluation dashboard ----------------------------------------------------------

def load_json(path: Path) -> dict | None:
    """The JSON file, or None when it does not exist yet."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def _comparison(data: dict):
    from eval.success import PolicyComparison

    runs = data["runs"]
    success = {where: [runs[name][where]["success"] for name in runs] for where in ("imagined", "physics")}
    return PolicyComparison(names=list(runs), imagined_successes=[sum(s) for s in success["imagined"]],
                            imagined_n=[len(s) for s in success["imagined"]],
                            physics_successes=[sum(s) for s in success["physics"]],
                            physics_n=[len(s) for s in success["physics"]])


def policy_eval_table(path: Path):
    """The policy family's success in imagination and physics (Wilson intervals), the
    correlations, and the mean episode length and wall time in each simulator."""
    data = load_json(path)
    if data is None:
        return _note(f"no {path}: run reverie-eval policy (the demo's policy_eval stage) first")
    runs = data["runs"]
    rows = ["| policy | imagined steps | physics steps | imagined seconds | physics seconds |", "|---|---|---|---|---|"]
    for name, r in runs.items():
        rows.append(f"| {name} | {np.mean(r['imagined']['steps']):.0f} | {np.mean(r['physics']['steps']):.0f} | "
                    f"{r['imagined']['seconds']:.1f} | {r['physics']['seconds']:.1f} |")
    return _html(markdown_to_html(_comparison(data).to_markdown()) + markdown_to_html("\n".join(rows)))


def policy_eval_figure(path: Path):
    """Imagined against physics success per policy (the scatter), and both side by side as bars."""
    import matplotlib.pyplot as plt

    data = load_json(path)
    if data is None:
        return _note(f"no {path}")
    c = _comparison(data)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.scatter(c.physics, c.imagined)
    for name, x, y in zip(c.names, c.physics, c.imagined):
        ax1.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax1.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax1.set(xlim=(-0.05, 1.05), ylim=(-0.05, 1.05), xlabel="physics success", ylabel="imagined success")
    x = np.arange(len(c.names))
    ax2.bar(x - 0.2, c.imagined, 0.4, label="imagined")
    ax2.bar(x + 0.2, c.physics, 0.4, label="physics")
    ax2.set_xticks(x, c.names, rotation=30, ha="right", fontsize=8)
    ax2.set(ylim=(0, 1.05), ylabel="success")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _html(f"<img src='{_png_uri(fig)}'>")


def rl_table(path: Path):
    """Success before and after RL, in physics and imagination, with the gain and the gap."""
    data = load_json(path)
    if data is None:
        return _note(f"no {path}: run reverie-rl (the demo's rl stage) first")
    rows = ["| | success | 95% interval | episodes |", "|---|---|---|---|"]
    for key, row in data["table"].items():
        rows.append(f"| {key.replace('_', ' ')} | {row['rate']:.2f} | [{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}] "
                    f"| {row['n']} |")
    text = "\n".join(rows) + f"\n\nPhysics gain: {data['physics_gain']:+.2f}."
    if "exploitation_gap_after" in data:
        text += (f"\nImagined minus physics success: {data['exploitation_gap_before']:+.2f} before, "
                 f"{data['exploitation_gap_after']:+.2f} after.")
    return _html(markdown_to_html(text))


def rl_figure(path: Path):
    """The RL run's imagined success and return per iteration (its metrics.jsonl beside
    ``path``), with the physics success before and after."""
    import matplotlib.pyplot as plt

    data, metrics = load_json(path), Path(path).parent / "metrics.jsonl"
    if data is None or not metrics.is_file():
        return _note(f"no {path} or {metrics}")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    it = [r["iteration"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.plot(it, [r["success"] for r in records], "o-", label="imagined rollouts (training)")
    for when, x in (("before", 0), ("after", max(it, default=1))):
        row = data["table"][f"physics_{when}"]
        ax1.errorbar([x], [row["rate"]], yerr=[[row["rate"] - row["ci95"][0]], [row["ci95"][1] - row["rate"]]],
                     fmt="s", capsize=4, label=f"physics {when} (n={row['n']})")
    ax1.set(xlabel="iteration", ylabel="success", ylim=(-0.05, 1.05))
    ax1.legend(fontsize=7)
    ax2.plot(it, [r["return"] for r in records], "o-")
    ax2.set(xlabel="iteration", ylabel="mean imagined return")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _html(f"<img src='{_png_uri(fig)}'>")
