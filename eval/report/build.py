"""``reverie-eval report``: writes the page and its markdown twin over a demo folder, checks its
media and, if asked, screenshots it. The sections say what each stage shows.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from eval.report.checks import check_media, screenshot
from eval.report.layout import DemoLayout
from eval.report.render import render_html, render_markdown
from eval.report.sections import (
    dataset_section,
    fidelity_section,
    policy_eval_section,
    progress_section,
    rl_section,
    rollouts_section,
)

log = logging.getLogger(__name__)


@dataclass
class ReportConfig:
    demo_dir: Path = Path("outputs/demo")  # the folder reverie-demo writes (--output_dir)
    episodes: int = 3  # held-out episodes shown as real-vs-imagined videos
    screenshot: bool = False  # also render the page in headless Chromium to report/screenshot.png

    def __post_init__(self):
        self.demo_dir = Path(self.demo_dir)
        if self.episodes < 0:
            raise ValueError(f"episodes must be >= 0, got {self.episodes=}")


def write_report(demo_dir: Path, episodes: int = 3) -> Path:
    """Writes ``<demo_dir>/report/index.html`` and ``report.md``; returns the HTML page's path.
    Stages that have not run leave a short note in their section."""
    layout = DemoLayout.from_demo(demo_dir)
    if layout.media.exists():
        shutil.rmtree(layout.media)  # media of an earlier report: episodes or stages may have changed
    layout.media.mkdir(parents=True)
    rollouts, regenerated = rollouts_section(layout, episodes)
    sections = [dataset_section(layout), rollouts, fidelity_section(layout), progress_section(layout, regenerated),
                policy_eval_section(layout), rl_section(layout)]
    (layout.report / "report.md").write_text(render_markdown(layout.output_dir, sections))
    page = layout.report / "index.html"
    page.write_text(render_html(layout.output_dir, sections))
    return page


def main(cfg: ReportConfig) -> Path:
    page = write_report(cfg.demo_dir, cfg.episodes)
    checked = check_media(page)
    log.info("%s: %d media files, all present and decodable", page, len(checked))
    if cfg.screenshot:
        log.info("screenshot: %s", screenshot(page))
    return page
