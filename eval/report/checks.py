"""Checks of the finished page: every image and video it references exists and (videos) decodes
(``check_media``), and it renders in headless Chromium (``screenshot``). Nothing here writes the
page.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (`make system-libs` installs it)


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
