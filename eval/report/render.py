"""The report's text: the page (jinja2, ``templates/page.html.j2``), its markdown twin, and the
small pieces of HTML the sections are made of. It reads and computes nothing.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import jinja2
import markdown

_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("eval.report", "templates"), autoescape=True,
                                undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                                lstrip_blocks=True)


@dataclass
class Section:
    """One stage's part of the report."""

    title: str
    about: str  # one paragraph: what a person is looking at
    html: str = ""  # markup, inserted into the page as it is
    markdown: str = ""
    missing: str | None = None  # why there is nothing to show (the stage has not run)


def render_html(demo_dir: Path, sections: list[Section]) -> str:
    """The whole page; titles, paragraphs and notes are escaped, each section's ``html`` is not."""
    return _TEMPLATES.get_template("page.html.j2").render(title=f"Reverie demo report: {demo_dir}",
                                                          sections=sections)


def render_markdown(demo_dir: Path, sections: list[Section]) -> str:
    lines = [f"# Reverie demo report: {demo_dir}", "", "The page with videos is index.html beside this file.", ""]
    for s in sections:
        lines += [f"## {s.title}", "", s.about, "", f"*{s.missing}*" if s.missing else s.markdown.strip(), ""]
    return "\n".join(lines)


def figure(src: str, caption: str, video: bool = False, width: int | None = None) -> str:
    """An <img> or a looping, muted <video> with a caption; ``src`` relative to the page; at
    most ``width`` pixels wide (large strips would push everything else off the screen)."""
    src, caption = html.escape(src, quote=True), html.escape(caption)
    style = f" style='max-width:{width}px'" if width else ""
    media = (f"<video src='{src}' controls loop muted autoplay playsinline{style}></video>" if video
             else f"<img src='{src}' alt='{caption}'{style}>")
    return f"<figure>{media}<figcaption>{caption}</figcaption></figure>"


def markdown_to_html(text: str) -> str:
    """The markdown the stages write (pipe tables and plain lines) as HTML. A line break inside a
    paragraph stays one (``nl2br``): the stages write one finding per line. ``<``, ``>`` and ``&``
    are escaped first, so the stages' text shows as text, never as markup."""
    return markdown.markdown(html.escape(text, quote=False), extensions=["tables", "nl2br"])
