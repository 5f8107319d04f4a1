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

The modules: ``layout`` (where the demo's stages write), ``sections`` (one per stage),
``render`` (the page from ``templates/page.html.j2``, markdown to HTML), ``rollouts`` (held-out
episodes re-generated through ``data.episodes``, and their progress curves), ``media`` (videos
and strips), ``checks`` (media check, screenshot), ``build`` (the command).
"""

from eval.report.build import ReportConfig, main, write_report
from eval.report.checks import CHROMIUM, check_media, screenshot
from eval.report.layout import MEDIA, DemoLayout
from eval.report.media import save_strip, side_by_side, write_video
from eval.report.render import Section, figure, markdown_to_html, render_html, render_markdown
from eval.report.rollouts import (
    demo_dataset,
    held_out_episodes,
    plot_progress_curves,
    progress_curves,
    regenerate,
)

__all__ = ["CHROMIUM", "MEDIA", "DemoLayout", "ReportConfig", "Section", "check_media", "demo_dataset", "figure",
           "held_out_episodes", "main", "markdown_to_html", "plot_progress_curves", "progress_curves", "regenerate",
           "render_html", "render_markdown", "save_strip", "screenshot", "side_by_side", "write_report",
           "write_video"]
