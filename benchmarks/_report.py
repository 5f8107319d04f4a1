"""Writes one benchmark's section into docs/benchmarks.md, between markers, keeping the others."""

from __future__ import annotations

import platform
import re
import shlex
import sys
import time
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEvery figure here is written by a script in `benchmarks/`, with the command that produced it.\n"


def machine() -> str:
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, Python {sys.version.split()[0]}"


def command() -> str:
    """The command line that is running, as a reader would retype it."""
    module = Path(sys.argv[0]).stem
    return " ".join(["python -m benchmarks." + module, *map(shlex.quote, sys.argv[1:])])


def write_section(name: str, command: str, body: str) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    section = (f"<!-- {name}:start -->\n## {name}\n\n`{command}`  \nmeasured {time.strftime('%Y-%m-%d')} on "
               f"{machine()}\n\n{body.strip()}\n<!-- {name}:end -->")
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    part = DOC.with_suffix(".md.part")  # atomic: a crash mid-write leaves the old page whole
    part.write_text(text)
    part.replace(DOC)
    print(f"wrote section {name!r} of {DOC}")
