"""The demo's report: one HTML page and a markdown summary over whatever stages have run.

    reverie-eval report --demo_dir outputs/demo                     # outputs/demo/report/index.html, report.md
    reverie-eval report --demo_dir outputs/demo --screenshot true   # and report/screenshot.png (headless Chromium)

Sections, each shown only when its stage's outputs exist (otherwise a one-line note): the
dataset; real against imagined rollouts of held-out episodes (the world model re-generates each
episode open loop from its first frame with the recorded actions), as an H.264 mp4 per view and
a PNG strip that needs no video support; the per-horizon fidelity curves; progress curves; the
imagined-vs-physics policy scatter; the RL learning curve. The report computes only the rollouts
and their progress curves; every other figure and table is copied from the stage that wrote it.
Everything the page shows lies under ``<demo_dir>/report/`` behind relative paths, so the folder
can be moved or archived alone.

``check_media`` verifies that every image and video the page references exists, is not empty
and (videos) decodes; ``screenshot`` renders the page in headless Chromium. Nothing here trains
or evaluates a model.

Dimension legend: V views, N frames of an episode, h x w image size.
"""

from __future__ import annotations

import html
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from torch import Tensor

log = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (`make system-libs` installs it)
MEDIA = "media"  # the report's folder of figures and videos


@dataclass
class ReportConfig:
    demo_dir: Path = Path("outputs/demo")  # the folder reverie-demo writes (--output_dir)
    episodes: int = 3  # held-out episodes shown as real-vs-imagined videos
    screenshot: bool = False  # also render the page in headless Chromium to report/screenshot.png
    seed: int = 0  # of the world model's sampling noise

    def __post_init__(self):
        self.demo_dir = Path(self.demo_dir)
        if self.episodes < 0:
            raise ValueError(f"episodes must be >= 0, got {self.episodes=}")


@dataclass
class Section:
    title: str
    about: str  # one paragraph: what a person is looking at
    html: str = ""
    markdown: str = ""
    missing: str | None = None  # why there is nothing to show (the stage has not run)


# ---- the report ---------------------------------------------------------------------------

def write_report(demo_dir: Path, episodes: int = 3, seed: int = 0) -> Path:
    """Writes ``<demo_dir>/report/index.html`` and ``report.md``; returns the HTML page's path.
    Stages that have not run leave a short note in their section."""
    demo_dir = Path(demo_dir)
    out = demo_dir / "report"
    if (out / MEDIA).exists():
        shutil.rmtree(out / MEDIA)  # media of an earlier report: episodes or stages may have changed
    (out / MEDIA).mkdir(parents=True)
    rollouts, curves = rollouts_section(demo_dir, out, episodes, seed)
    sections = [dataset_section(demo_dir, out), rollouts, fidelity_section(demo_dir, out),
                progress_section(demo_dir, out, curves), policy_eval_section(demo_dir, out), rl_section(demo_dir, out)]
    (out / "report.md").write_text(render_markdown(demo_dir, sections))
    page = out / "index.html"
    page.write_text(render_html(demo_dir, sections))
    return page


def render_html(demo_dir: Path, sections: list[Section]) -> str:
    body = []
    for s in sections:
        body.append(f"<section><h2>{html.escape(s.title)}</h2>\n<p class='about'>{html.escape(s.about)}</p>")
        body.append(f"<p class='missing'>{html.escape(s.missing)}</p>" if s.missing else s.html)
        body.append("</section>")
    return PAGE.format(title=html.escape(f"Reverie demo report: {demo_dir}"), body="\n".join(body))


def render_markdown(demo_dir: Path, sections: list[Section]) -> str:
    lines = [f"# Reverie demo report: {demo_dir}", "", "The page with videos is index.html beside this file.", ""]
    for s in sections:
        lines += [f"## {s.title}", "", s.about, "", f"*{s.missing}*" if s.missing else s.markdown.strip(), ""]
    return "\n".join(lines)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1200px; margin: 1em auto; padding: 0 1em; color: #222; }}
h2 {{ border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }}
p.about {{ max-width: 60em; line-height: 1.4; }}
p.missing {{ color: #888; font-style: italic; }}
table {{ border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 0.4em 1em 0.8em 0; vertical-align: top; }}
figcaption {{ font-size: 0.85em; color: #555; }}
img, video {{ max-width: 100%; image-rendering: pixelated; }}
div.row {{ display: flex; gap: 1em; align-items: flex-start; flex-wrap: wrap; }}
div.row > div {{ max-width: 760px; }}
</style></head>
<body>
<h1>{title}</h1>
{body}
</body></html>
"""


def figure(src: str, caption: str, video: bool = False, width: int | None = None) -> str:
    """An <img> or a looping, muted <video> with a caption; ``src`` relative to the page; at
    most ``width`` pixels wide (large strips would push everything else off the screen)."""
    src, caption = html.escape(src, quote=True), html.escape(caption)
    style = f" style='max-width:{width}px'" if width else ""
    media = (f"<video src='{src}' controls loop muted autoplay playsinline{style}></video>" if video
             else f"<img src='{src}' alt='{caption}'{style}>")
    return f"<figure>{media}<figcaption>{caption}</figcaption></figure>"


def markdown_to_html(text: str) -> str:
    """The markdown the stages write (pipe tables and plain lines) as HTML: a table for each
    block of ``|`` lines (its first row the header, the ``|---|`` row dropped), a paragraph for
    each other block."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if lines and all(line.startswith("|") for line in lines):
            rows = [[html.escape(c.strip()) for c in line.strip("|").split("|")]
                    for line in lines if not set(line) <= set("|-: ")]
            head = "".join(f"<th>{c}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:])
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif lines:
            out.append("<p>" + "<br>".join(html.escape(line) for line in lines) + "</p>")
    return "\n".join(out)


def _copy(src: Path, out: Path, name: str) -> str:
    """Copies a stage's file into the report's media folder; returns its path relative to the page."""
    shutil.copyfile(src, out / MEDIA / name)
    return f"{MEDIA}/{name}"


def _table(path: Path) -> tuple[str, str]:
    """A stage's markdown file as (HTML, markdown); empty when the file is missing."""
    if not path.is_file():
        return "", ""
    text = path.read_text()
    return markdown_to_html(text), text


def _missing(stage: str, path: Path) -> str:
    return f"Not run yet: no {path} (the {stage} stage of reverie-demo writes it)."


# ---- sections -----------------------------------------------------------------------------

def dataset_section(demo_dir: Path, out: Path) -> Section:
    s = Section("Dataset", "Physics episodes collected by the scripted expert with injected failures: the data "
                           "every model here is trained on. Each row of the strip is one episode, frames left "
                           "to right, the camera views side by side.")
    strip = demo_dir / "dataset_strip.png"
    if not strip.is_file():
        s.missing = _missing("collect", strip)
        return s
    src = _copy(strip, out, "dataset_strip.png")
    s.html, s.markdown = figure(src, "episodes of the dataset", width=480), f"![dataset]({src})"
    return s


def rollouts_section(demo_dir: Path, out: Path, episodes: int, seed: int) -> tuple[Section, dict | None]:
    """Real against imagined videos of held-out episodes; also returns the episodes and their
    re-generations, for the progress curves ({"episodes", "imagined", "views"}), or None."""
    s = Section("Real vs imagined rollouts",
                "Held-out episodes the world model never trained on. The world model starts from each "
                "episode's first real frame and re-generates the whole episode open loop, driven only by "
                "the recorded actions. Left: the real frames; right: the imagined ones. Where the two "
                "drift apart, the simulator stops being trustworthy. The strip beside each video shows "
                "the same frames without needing video support (real row above imagined row).")
    world_model, dataset = demo_dir / "world_model" / "model", demo_dir / "dataset"
    for path, stage in ((dataset / "meta" / "info.json", "collect"), (world_model / "config.json", "world_model")):
        if not path.is_file():
            s.missing = _missing(stage, path)
            return s, None
    if episodes == 0:
        s.missing = "No episodes asked for (--episodes 0)."
        return s, None
    from simulator.world_model import WorldModel

    spec = WorldModel.from_pretrained(world_model).spec
    if spec.future != spec.horizon:
        s.missing = (f"The world model predicts {spec.future} frames per {spec.horizon} actions; re-generating "
                     f"episodes frame by frame needs one frame per action.")
        return s, None
    eps, views, fps = held_out_episodes(dataset, episodes)
    imagined = regenerate(world_model, dataset, eps, seed)
    parts, md = [], []
    for e, fake in zip(eps, imagined):
        outcome = "success" if e.success else "failure"
        parts.append(f"<h3>Episode {e.index} ({outcome}, {e.length} frames)</h3>")
        for v, view in enumerate(views):
            name = f"episode_{e.index:04d}_{view}"
            write_video(out / MEDIA / f"{name}.mp4", [e.frames[v], fake[v]], ["real", "imagined"], fps)
            save_strip(out / MEDIA / f"{name}.png", [e.frames[v], fake[v]], ["real", "imagined"])
            parts.append("<div class='row'>"
                         + figure(f"{MEDIA}/{name}.mp4", f"{view} view: real | imagined (open loop)", video=True)
                         + figure(f"{MEDIA}/{name}.png", f"{view} view: real frames (top), imagined (bottom)", width=620)
                         + "</div>")
            md.append(f"- episode {e.index} ({outcome}), {view}: [video]({MEDIA}/{name}.mp4), "
                      f"![strip]({MEDIA}/{name}.png)")
    s.html, s.markdown = "\n".join(parts), "\n".join(md)
    return s, {"episodes": eps, "imagined": imagined, "views": views}


def fidelity_section(demo_dir: Path, out: Path) -> Section:
    s = Section("World-model fidelity per horizon",
                "Open-loop rollouts from many held-out start frames, scored against the real frames at "
                "every predicted step: PSNR and SSIM of the world model (solid) against simply copying "
                "the last real frame (dashed), and, where a state probe was trained, the end-effector "
                "position read off imagined frames against the same probe on real ones. A useful model "
                "stays above copy-last as the horizon grows. The strips show real frames over imagined "
                "ones for a few rollouts.")
    report = demo_dir / "world_model_eval"
    if not (report / "fidelity.png").is_file():
        s.missing = _missing("world_model", report / "fidelity.png")
        return s
    table_html, table_md = _table(report / "fidelity.md")
    curves = _copy(report / "fidelity.png", out, "fidelity.png")
    s.html, s.markdown = figure(curves, "PSNR, SSIM and probe error per horizon"), f"![fidelity]({curves})"
    strips = ""
    if (report / "strips.png").is_file():
        src = _copy(report / "strips.png", out, "fidelity_strips.png")
        strips = figure(src, "rollouts: real (upper) and imagined (lower) rows", width=300)
        s.markdown += f"\n![strips]({src})"
    s.html += f"<div class='row'><div>{table_html}</div>{strips}</div>"
    s.markdown += "\n\n" + table_md
    return s


def progress_section(demo_dir: Path, out: Path, rollouts: dict | None) -> Section:
    s = Section("Progress value model",
                "The progress model reads frames and the task and says how far the episode has got (0 to "
                "1) and whether it is solved; its gain is the imagined simulator's reward. The first "
                "figure is its reading of held-out episodes against the dataset's progress labels "
                "(dashed), with the ensemble's spread. The second reads the episodes of the rollouts "
                "above twice: on the real frames and on the world model's re-generation; the closer "
                "the two curves, the more the reward in imagination means what it means on real frames.")
    report, model = demo_dir / "progress_eval", demo_dir / "progress" / "model"
    parts, md = [], []
    if (report / "value.png").is_file():
        src = _copy(report / "value.png", out, "value.png")
        parts.append(figure(src, "predicted progress over held-out episodes"))
        md.append(f"![value]({src})")
    if rollouts is not None and (model / "config.json").is_file():
        src = f"{MEDIA}/progress_real_vs_imagined.png"
        curves = progress_curves(model, rollouts["episodes"], {"imagined": rollouts["imagined"]})
        plot_progress_curves(out / src, rollouts["episodes"], curves)
        parts.append(figure(src, "progress on real and on imagined frames of the same episodes"))
        md.append(f"![progress on real and imagined frames]({src})")
    if not parts:
        s.missing = _missing("progress", report / "value.png")
        return s
    table_html, table_md = _table(report / "value.md")
    s.html, s.markdown = "\n".join(parts) + table_html, "\n".join(md) + "\n\n" + table_md
    return s


def policy_eval_section(demo_dir: Path, out: Path) -> Section:
    s = Section("Policy evaluation: imagination against physics",
                "A family of scripted policies, from the expert to deliberately broken ones, each run "
                "from the same start states in the imagined simulator and in physics. Each point is one "
                "policy: physics success across, imagined success up, with 95% Wilson intervals; the "
                "dashed diagonal is perfect agreement. What matters is the ranking: a high rank "
                "correlation means the imagined simulator orders policies as physics does.")
    return _figure_and_table(s, demo_dir / "policy_eval", "policy_eval.png", "policy_eval.md", "policy_eval", out,
                             "imagined against physics success per policy")


def rl_section(demo_dir: Path, out: Path) -> Section:
    s = Section("RL in imagination",
                "The behaviour-cloned policy refined by RL purely inside the world model, rewarded by "
                "progress. Left: success of the imagined training rollouts per iteration, with the "
                "physics success before and after as reference points; right: the imagined return. The "
                "table is the ground truth: success in physics (and in imagination) before and after "
                "RL. Imagined success rising while physics success does not means the policy learned to "
                "exploit the world model.")
    return _figure_and_table(s, demo_dir / "rl", "learning_curve.png", "rl_eval.md", "rl", out,
                             "success and return per RL iteration")


def _figure_and_table(s: Section, folder: Path, png: str, md: str, stage: str, out: Path, caption: str) -> Section:
    """A section of one stage's figure and markdown table, or its note when the stage has not run."""
    if not (folder / png).is_file():
        s.missing = _missing(stage, folder / png)
        return s
    src = _copy(folder / png, out, png)
    table_html, table_md = _table(folder / md)
    s.html = figure(src, caption) + table_html
    s.markdown = f"![{caption}]({src})\n\n{table_md}"
    return s


# ---- real and imagined episodes -----------------------------------------------------------

def demo_dataset(root: Path):
    """The demo's dataset with the split every demo stage used (data.episodes.held_out_count)."""
    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

    from data.clips import DatasetConfig
    from data.episodes import held_out_count

    n = LeRobotDatasetMetadata("local/dataset", root=root).total_episodes
    return DatasetConfig(root=Path(root), val_episodes=held_out_count(n))


def held_out_episodes(root: Path, n: int, views: tuple[str, ...] | None = None) -> tuple[list, tuple[str, ...], int]:
    """The first ``n`` held-out episodes of the demo's dataset at ``root`` (data.episodes.Episode:
    frames, actions, states, labels), the views in order, and the dataset's frame rate."""
    from dataclasses import replace

    from lerobot.datasets.dataset_metadata import LeRobotDatasetMetadata

    from data.episodes import load_episodes

    dataset = demo_dataset(root)
    if views is not None:
        dataset = replace(dataset, views=tuple(views))
    _, held_out = dataset.split()
    episodes, views = load_episodes(dataset, held_out[:n], desc="decode held-out episodes")
    return episodes, tuple(views), int(LeRobotDatasetMetadata("local/dataset", root=root).fps)


def regenerate(world_model: Path, root: Path, episodes: list, seed: int = 0) -> list[Tensor]:
    """Each episode re-imagined open loop from its first frame with its recorded actions, by the
    world model's deterministic prediction (1 sampling step): (V, N, 3, h, w) uint8 each."""
    from simulator.env import load_normalizer
    from simulator.world_model import WorldModel, WorldModelSampler
    from simulator.world_model.sampler import regenerate_episodes

    model = WorldModel.from_pretrained(world_model).eval()
    return regenerate_episodes(WorldModelSampler(model, num_steps=1), [(e.frames, e.actions, e.states) for e in episodes],
                               load_normalizer(world_model, root), seed=seed)


def progress_curves(progress: Path, episodes: list, imagined: dict[str, list[Tensor]]) -> dict[str, list[np.ndarray]]:
    """The progress model's reading of every frame: {"real": [(N,) per episode], name: [...] for
    each list of imagined episodes (V, N', 3, h, w)}. Imagined frames are read with the real
    episode's first frames, where they started from."""
    from simulator.progress import ProgressModel

    model = ProgressModel.from_pretrained(progress).eval()

    def read(frames: Tensor, e) -> np.ndarray:
        return model.score_episode(frames, e.task, first_frames=e.frames[:, 0]).progress.numpy()

    curves = {"real": [read(e.frames, e) for e in episodes]}
    for name, runs in imagined.items():
        curves[name] = [read(frames, e) for frames, e in zip(runs, episodes)]
    return curves


def plot_progress_curves(path: Path, episodes: list, curves: dict[str, list[np.ndarray]]) -> Path:
    """One panel per episode: the predicted progress of each reading, and the dataset's label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(1, min(3, len(episodes)))
    rows = -(-len(episodes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for i, (ax, e) in enumerate(zip(axes.flat, episodes)):
        for (name, values), style in zip(curves.items(), ("-", "--", "-.", ":")):
            ax.plot(np.arange(len(values[i])), values[i], style, label=f"predicted, {name} frames")
        ax.plot(np.arange(e.length), e.progress.numpy(), ":", color="gray", label="label (real)")
        ax.set(ylim=(-0.05, 1.05), xlabel="frame", ylabel="progress",
               title=f"episode {e.index} ({'success' if e.success else 'failure'})")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(episodes):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- frames to videos and strips ----------------------------------------------------------

def side_by_side(clips: list[Tensor], labels: list[str], scale: int | None = None) -> list[np.ndarray]:
    """Frames (N_i, 3, h, w) uint8 of several clips as one (H, W, 3) uint8 image per time step:
    the clips left to right, each under its label, enlarged ``scale`` times (default: to about
    256 pixels wide) without smoothing. A clip shorter than the longest holds its last frame."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = clips[0].shape[-2:]
    scale = scale or max(1, 256 // w)
    n, gap, bar = max(c.shape[0] for c in clips), 4, 20
    width = len(clips) * w * scale + (len(clips) - 1) * gap
    header = Image.new("RGB", (width, bar), "white")
    draw, font = ImageDraw.Draw(header), ImageFont.load_default(size=14)
    for i, label in enumerate(labels):
        draw.text((i * (w * scale + gap) + 4, 2), label, fill="black", font=font)
    header = np.asarray(header)
    out = []
    for t in range(n):
        tiles = []
        for i, c in enumerate(clips):
            frame = c[min(t, c.shape[0] - 1)].permute(1, 2, 0).numpy()
            tiles.append(frame.repeat(scale, 0).repeat(scale, 1))
            if i < len(clips) - 1:
                tiles.append(np.full((h * scale, gap, 3), 255, np.uint8))
        out.append(np.concatenate([header, np.concatenate(tiles, 1)], 0))
    return out


def write_video(path: Path, clips: list[Tensor], labels: list[str], fps: int = 20) -> Path:
    """The clips (N_i, 3, h, w) uint8 side by side as an H.264 mp4 (``simulator.recording.write_mp4``)."""
    from simulator.recording import write_mp4

    return write_mp4(path, side_by_side(clips, labels), fps)


def save_strip(path: Path, clips: list[Tensor], labels: list[str], columns: int = 8) -> Path:
    """A PNG of ``columns`` frames spread over time, one row per clip (N_i, 3, h, w) uint8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(c.shape[0] for c in clips)
    times = np.linspace(0, n - 1, min(columns, n)).round().astype(int)
    fig, axes = plt.subplots(len(clips), len(times), figsize=(1.0 * len(times), 1.15 * len(clips)), squeeze=False)
    for r, (c, label) in enumerate(zip(clips, labels)):
        for k, t in enumerate(times):
            ax = axes[r, k]
            ax.imshow(c[min(t, c.shape[0] - 1)].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={t}", fontsize=8)
            if k == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---- checks -------------------------------------------------------------------------------

class _Sources(HTMLParser):
    """The files a page's <img>, <video> and <source> tags reference."""

    def __init__(self):
        super().__init__()
        self.sources: list[tuple[str, str]] = []  # (tag, src)

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and (name == "src" and tag in ("img", "video", "source") or name == "poster"):
                self.sources.append((tag, value))


def check_media(page: Path) -> list[Path]:
    """Checks every image and video the HTML page references: a relative path to a file that
    exists and is not empty, and for a video one that decodes (pyav). Returns the files; raises
    ValueError listing every broken one."""
    import av

    parser = _Sources()
    parser.feed(Path(page).read_text())
    files, problems = [], []
    for tag, src in parser.sources:
        path = Path(page).parent / src
        if re.match(r"^[a-z]+:", src) or src.startswith("/"):
            problems.append(f"{src}: not a path relative to the page")
        elif not path.is_file() or path.stat().st_size == 0:
            problems.append(f"{src}: missing or empty")
        elif tag in ("video", "source"):
            try:
                with av.open(str(path)) as container:
                    frames = sum(1 for _ in container.decode(video=0))
                if frames == 0:
                    problems.append(f"{src}: no video frame decodes")
            except (av.error.FFmpegError, ValueError) as e:
                problems.append(f"{src}: does not decode ({e})")
        files.append(path)
    if problems:
        raise ValueError(f"{page} has broken media:\n  " + "\n  ".join(problems))
    return files


def screenshot(page: Path, png: Path | None = None, chromium: Path = CHROMIUM, size: tuple[int, int] = (1280, 9000),
               timeout: float = 180) -> Path:
    """Renders the page in headless Chromium to ``png`` (default: screenshot.png beside the page).
    The flags keep Chromium off the network (it has none here) and out of the user's profile."""
    page = Path(page).resolve()
    png = Path(png).resolve() if png is not None else page.parent / "screenshot.png"
    if not Path(chromium).is_file():
        raise FileNotFoundError(f"no Chromium at {chromium}: install Debian's package (apt-get install chromium; "
                                f"`make system-libs` does it as root)")
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", "--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=5000",
               f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", f"--screenshot={png}",
               page.as_uri()]
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not png.is_file():
        raise RuntimeError(f"Chromium made no screenshot of {page} (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return png


def main(cfg: ReportConfig) -> Path:
    page = write_report(cfg.demo_dir, cfg.episodes, cfg.seed)
    checked = check_media(page)
    log.info("%s: %d media files, all present and decodable", page, len(checked))
    if cfg.screenshot:
        log.info("screenshot: %s", screenshot(page))
    return page
