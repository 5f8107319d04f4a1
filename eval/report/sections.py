"""The report's sections, one per demo stage: each copies its stage's figure and table into the
report's media folder, or says which file is missing. Only the rollouts section computes
anything (through ``eval.report.rollouts``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from data.episodes import Episode
from eval.report.layout import MEDIA, DemoLayout
from eval.report.media import save_strip, write_video
from eval.report.render import Section, figure, markdown_to_html
from eval.report.rollouts import held_out_episodes, plot_progress_curves, progress_curves, regenerate


def _copy(src: Path, layout: DemoLayout, name: str) -> str:
    """Copies a stage's file into the report's media folder; returns its path relative to the page."""
    shutil.copyfile(src, layout.media / name)
    return f"{MEDIA}/{name}"


def _table(path: Path) -> tuple[str, str]:
    """A stage's markdown file as (HTML, markdown); empty when the file is missing."""
    if not path.is_file():
        return "", ""
    text = path.read_text()
    return markdown_to_html(text), text


def _missing(stage: str, path: Path) -> str:
    return f"Not run yet: no {path} (the {stage} stage of reverie-demo writes it)."


def dataset_section(layout: DemoLayout) -> Section:
    s = Section("Dataset", "Physics episodes collected by the scripted expert with injected failures: the data "
                           "every model here is trained on. Each row of the strip is one episode, frames left "
                           "to right, the camera views side by side.")
    if not layout.dataset_strip.is_file():
        s.missing = _missing("collect", layout.dataset_strip)
        return s
    src = _copy(layout.dataset_strip, layout, "dataset_strip.png")
    s.html, s.markdown = figure(src, "episodes of the dataset", width=480), f"![dataset]({src})"
    return s


def rollouts_section(layout: DemoLayout, episodes: int) -> tuple[Section, list[Episode] | None]:
    """Real against imagined videos of held-out episodes; also returns those episodes, each with
    its re-generation (``Episode.regenerated``), for the progress curves; or None."""
    s = Section("Real vs imagined rollouts",
                "Held-out episodes the world model never trained on. The world model starts from each "
                "episode's first real frame and re-generates the whole episode open loop, driven only by "
                "the recorded actions. Left: the real frames; right: the imagined ones. Where the two "
                "drift apart, the simulator stops being trustworthy. The strip beside each video shows "
                "the same frames without needing video support (real row above imagined row).")
    for path, stage in ((layout.dataset_info, "collect"), (layout.world_model_config, "world_model")):
        if not path.is_file():
            s.missing = _missing(stage, path)
            return s, None
    if episodes == 0:
        s.missing = "No episodes asked for (--episodes 0)."
        return s, None
    from simulator.world_model import WorldModel

    spec = WorldModel.from_pretrained(layout.world_model).spec
    if spec.future != spec.horizon:
        s.missing = (f"The world model predicts {spec.future} frames per {spec.horizon} actions; re-generating "
                     f"episodes frame by frame needs one frame per action.")
        return s, None
    eps, views, fps = held_out_episodes(layout.dataset, episodes)
    regenerate(layout.world_model, layout.dataset, eps)
    parts, md = [], []
    for e in eps:
        outcome = "success" if e.success else "failure"
        parts.append(f"<h3>Episode {e.index} ({outcome}, {e.length} frames)</h3>")
        for v, view in enumerate(views):
            html, line = _episode_view(layout, e, v, view, fps)
            parts.append(html)
            md.append(f"- episode {e.index} ({outcome}), {view}: {line}")
    s.html, s.markdown = "\n".join(parts), "\n".join(md)
    return s, eps


def _episode_view(layout: DemoLayout, e: Episode, v: int, view: str, fps: int) -> tuple[str, str]:
    """One view of an episode, real beside imagined, as an mp4 and a PNG strip: (HTML, markdown)."""
    name, clips, labels = f"episode_{e.index:04d}_{view}", [e.frames[v], e.regenerated[v]], ["real", "imagined"]
    write_video(layout.media / f"{name}.mp4", clips, labels, fps)
    save_strip(layout.media / f"{name}.png", clips, labels)
    html = ("<div class='row'>"
            + figure(f"{MEDIA}/{name}.mp4", f"{view} view: real | imagined (open loop)", video=True)
            + figure(f"{MEDIA}/{name}.png", f"{view} view: real frames (top), imagined (bottom)", width=620)
            + "</div>")
    return html, f"[video]({MEDIA}/{name}.mp4), ![strip]({MEDIA}/{name}.png)"


def fidelity_section(layout: DemoLayout) -> Section:
    s = Section("World-model fidelity per horizon",
                "Open-loop rollouts from many held-out start frames, scored against the real frames at "
                "every predicted step: PSNR and SSIM of the world model (solid) against simply copying "
                "the last real frame (dashed), and, where a state probe was trained, the end-effector "
                "position read off imagined frames against the same probe on real ones. A useful model "
                "stays above copy-last as the horizon grows. The strips show real frames over imagined "
                "ones for a few rollouts.")
    if not layout.fidelity_figure.is_file():
        s.missing = _missing("world_model", layout.fidelity_figure)
        return s
    table_html, table_md = _table(layout.fidelity_table)
    curves = _copy(layout.fidelity_figure, layout, "fidelity.png")
    s.html, s.markdown = figure(curves, "PSNR, SSIM and probe error per horizon"), f"![fidelity]({curves})"
    strips = ""
    if layout.fidelity_strips.is_file():
        src = _copy(layout.fidelity_strips, layout, "fidelity_strips.png")
        strips = figure(src, "rollouts: real (upper) and imagined (lower) rows", width=300)
        s.markdown += f"\n![strips]({src})"
    s.html += f"<div class='row'><div>{table_html}</div>{strips}</div>"
    s.markdown += "\n\n" + table_md
    return s


def progress_section(layout: DemoLayout, rollouts: list[Episode] | None) -> Section:
    """``rollouts``: the rollouts section's episodes with their re-generations, or None."""
    s = Section("Progress value model",
                "The progress model reads frames and the task and says how far the episode has got (0 to "
                "1) and whether it is solved; its gain is the imagined simulator's reward. The first "
                "figure is its reading of held-out episodes against the dataset's progress labels "
                "(dashed), with the ensemble's spread. The second reads the episodes of the rollouts "
                "above twice: on the real frames and on the world model's re-generation; the closer "
                "the two curves, the more the reward in imagination means what it means on real frames.")
    parts, md = [], []
    if layout.value_figure.is_file():
        src = _copy(layout.value_figure, layout, "value.png")
        parts.append(figure(src, "predicted progress over held-out episodes"))
        md.append(f"![value]({src})")
    if rollouts is not None and layout.progress_model_config.is_file():
        src = f"{MEDIA}/progress_real_vs_imagined.png"
        curves = progress_curves(layout.progress_model, rollouts, {"imagined": [e.regenerated for e in rollouts]})
        plot_progress_curves(layout.report / src, rollouts, curves)
        parts.append(figure(src, "progress on real and on imagined frames of the same episodes"))
        md.append(f"![progress on real and imagined frames]({src})")
    if not parts:
        s.missing = _missing("progress", layout.value_figure)
        return s
    table_html, table_md = _table(layout.value_table)
    s.html, s.markdown = "\n".join(parts) + table_html, "\n".join(md) + "\n\n" + table_md
    return s


def policy_eval_section(layout: DemoLayout) -> Section:
    s = Section("Policy evaluation: imagination against physics",
                "A family of scripted policies, from the expert to deliberately broken ones, each run "
                "from the same start states in the imagined simulator and in physics. Each point is one "
                "policy: physics success across, imagined success up, with 95% Wilson intervals; the "
                "dashed diagonal is perfect agreement. What matters is the ranking: a high rank "
                "correlation means the imagined simulator orders policies as physics does.")
    return _figure_and_table(s, layout, layout.policy_eval_figure, layout.policy_eval_table, "policy_eval",
                             "imagined against physics success per policy")


def rl_section(layout: DemoLayout) -> Section:
    s = Section("RL in imagination",
                "The behaviour-cloned policy refined by RL purely inside the world model, rewarded by "
                "progress. Left: success of the imagined training rollouts per iteration, with the "
                "physics success before and after as reference points; right: the imagined return. The "
                "table is the ground truth: success in physics (and in imagination) before and after "
                "RL. Imagined success rising while physics success does not means the policy learned to "
                "exploit the world model.")
    return _figure_and_table(s, layout, layout.rl_figure, layout.rl_table, "rl", "success and return per RL iteration")


def _figure_and_table(s: Section, layout: DemoLayout, png: Path, md: Path, stage: str, caption: str) -> Section:
    """A section of one stage's figure and markdown table, or its note when the stage has not run."""
    if not png.is_file():
        s.missing = _missing(stage, png)
        return s
    src = _copy(png, layout, png.name)
    table_html, table_md = _table(md)
    s.html = figure(src, caption) + table_html
    s.markdown = f"![{caption}]({src})\n\n{table_md}"
    return s
