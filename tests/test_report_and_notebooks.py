"""The demo's report (eval.report), its headless-Chromium screenshot, and the notebooks, run on
the outputs of one tiny demo run (every stage, at a few training steps each)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.report import CHROMIUM, check_media, screenshot, write_report

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


@pytest.fixture(scope="module")
def demo_dir(demo_run):
    """The tiny demo run's folder (tests/conftest.py: one run, shared with tests/test_demo.py)."""
    return demo_run[0]


def test_demo_report_shows_every_stage_and_its_media_decode(demo_dir):
    page = demo_dir / "report" / "index.html"  # the demo's report stage wrote it
    text = page.read_text()
    assert "Not run yet" not in text
    for title in ("Dataset", "Real vs imagined rollouts", "World-model fidelity per horizon", "Progress value model",
                  "Policy evaluation: imagination against physics", "RL in imagination"):
        assert f"<h2>{title}</h2>" in text
    assert "<table>" in text and "<video " in text and "Spearman rho" in text and "physics before" in text
    files = check_media(page)
    names = {f.name for f in files}
    for view in ("front", "wrist"):  # the one held-out episode of 3, a video and a strip per view
        assert {f"episode_0002_{view}.mp4", f"episode_0002_{view}.png"} <= names
    assert {"fidelity.png", "value.png", "progress_real_vs_imagined.png", "policy_eval.png",
            "learning_curve.png"} <= names
    md = (demo_dir / "report" / "report.md").read_text()
    assert "| horizon (frames) | PSNR model |" in md and "](media/episode_0002_front.mp4)" in md


def test_report_skips_stages_that_have_not_run(tmp_path, demo_dir):
    page = write_report(tmp_path)  # nothing at all: every section says so
    assert page.read_text().count("Not run yet") == 6 and check_media(page) == []
    partial = tmp_path / "partial"  # the dataset and the world model only, through the CLI
    (partial / "world_model").mkdir(parents=True)
    (partial / "dataset").symlink_to(demo_dir / "dataset")
    (partial / "world_model" / "model").symlink_to(demo_dir / "world_model" / "model")
    out = subprocess.run([sys.executable, "-m", "eval.cli", "report", "--demo_dir", str(partial), "--episodes", "1"],
                         check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    text = (partial / "report" / "index.html").read_text()
    assert text.count("Not run yet") == 5 and "<video " in text and "no " + str(partial / "rl") in text
    assert len(check_media(partial / "report" / "index.html")) == 4  # 2 views: a video and a strip each


def test_check_media_names_broken_files(tmp_path):
    (tmp_path / "empty.png").touch()
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    page = tmp_path / "index.html"
    page.write_text("<img src='missing.png'><img src='empty.png'><video src='junk.mp4'></video>"
                    "<img src='/etc/hostname'>")
    with pytest.raises(ValueError) as e:
        check_media(page)
    for name in ("missing.png: missing", "empty.png: missing or empty", "junk.mp4: does not decode",
                 "/etc/hostname: not a path relative"):
        assert name in str(e.value)


@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; "
                                                   "`make system-libs` installs it as root)")
def test_screenshot_of_the_report_is_not_blank(demo_dir):
    from PIL import Image

    png = screenshot(demo_dir / "report" / "index.html")
    assert png == demo_dir / "report" / "screenshot.png"
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (9000, 1280, 3)
    colours = np.unique(image.reshape(-1, 3)[::7], axis=0)
    assert len(colours) > 500 and image.std() > 10  # text, plots and frames, not one flat colour


@pytest.mark.parametrize(("notebook", "expected"), [
    ("imagined_rollouts.ipynb", "<video src='data:video/mp4;base64,"),
    ("interactive_control.ipynb", "chunk 1: reward"),
    ("policy_evaluation_dashboard.ipynb", "physics before"),
])
def test_notebook_runs_top_to_bottom(notebook, expected, demo_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="the notebooks extra: pip install -e '.[notebooks]'")
    nbclient = pytest.importorskip("nbclient", reason="the notebooks extra: pip install -e '.[notebooks]'")
    pytest.importorskip("ipykernel", reason="the notebooks extra: pip install -e '.[notebooks]'")
    monkeypatch.setenv("REVERIE_DEMO_DIR", str(demo_dir))  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    # "python3" runs sys.executable: jupyter_client puts this interpreter in place of the spec's "python"
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = "".join(str(o.get("data", {}).get("text/html", "")) + str(o.get("data", {}).get("text/plain", ""))
                    for o in outputs)
    assert expected in shown and "no " + str(demo_dir) not in shown
