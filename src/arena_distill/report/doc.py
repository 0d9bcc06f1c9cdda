"""Documents as blocks (headings, paragraphs, tables, images), rendered to markdown (images as
files) or self-contained HTML (images embedded): the report and the comparison are ``Doc``s,
each report section a ``Section`` whose blocks the document takes over in order."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


class Blocks:
    """Headings, paragraphs, tables and images, in order: what documents and sections hold."""

    blocks: list[tuple]

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.blocks.append(("table", list(headers), [list(r) for r in rows]))

    def image(self, name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("img", name, png, caption))

    def extend(self, other: Blocks) -> None:
        """Append ``other``'s blocks (a section of this document)."""
        self.blocks.extend(other.blocks)

    @property
    def images(self) -> dict[str, bytes]:
        return {b[1]: b[2] for b in self.blocks if b[0] == "img"}

    def markdown_lines(self, plots_dir: str = "plots") -> list[str]:
        """The blocks' markdown, a list of lines (every block followed by a blank line)."""
        out: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                out += ["#" * b[1] + " " + b[2], ""]
            elif b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "table":
                out.append("| " + " | ".join(b[1]) + " |")
                out.append("|" + "|".join("---" for _ in b[1]) + "|")
                out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in b[2]]
                out.append("")
            elif b[0] == "img":
                out += [f"![{b[3]}]({plots_dir}/{b[1]}.png)", ""]
        return out

    def html_lines(self) -> list[str]:
        """The blocks' HTML, one element a line (images embedded)."""
        esc = html.escape
        out: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{esc(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                out.append(f"<p>{_md_inline_html(b[1])}</p>")
            elif b[0] == "table":
                out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in b[1]) + "</tr>")
                out += [
                    "<tr>" + "".join(f"<td>{esc(_cell(c))}</td>" for c in r) + "</tr>" for r in b[2]
                ]
                out.append("</table>")
            elif b[0] == "img":
                data = base64.b64encode(b[2]).decode("ascii")
                out.append(
                    f'<figure><img alt="{esc(b[3])}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{esc(b[3])}</figcaption></figure>"
                )
        return out


@dataclass
class Section(Blocks):
    """One section of a document: its blocks, the first of them its heading (the preamble
    before the first heading has none); empty when the run has nothing for it."""

    blocks: list[tuple] = field(default_factory=list)

    @property
    def heading(self) -> str | None:
        """The text of the section's heading (None without one)."""
        return self.blocks[0][2] if self.blocks and self.blocks[0][0] == "h" else None

    def markdown(self, plots_dir: str = "plots") -> str:
        return "\n".join(self.markdown_lines(plots_dir))


@dataclass
class Doc(Blocks):
    """A document as blocks, rendered to markdown (images as files) or self-contained HTML."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def markdown(self, plots_dir: str = "plots") -> str:
        return "\n".join([f"# {self.title}", "", *self.markdown_lines(plots_dir)])

    def html(self) -> str:
        esc = html.escape
        out = [
            "<!DOCTYPE html>",
            '<html><head><meta charset="utf-8">',
            f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;}"
            "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
            "th:first-child,td:first-child{text-align:left}"
            "figure{display:inline-block;margin:0.5em}</style>",
            "</head><body>",
            f"<h1>{esc(self.title)}</h1>",
            *self.html_lines(),
            "</body></html>",
        ]
        return "\n".join(out)

    def write(self, out_dir: Path, stem: str) -> None:
        """``<stem>.md`` (images in ``plots/``) and ``<stem>.html`` (images embedded)."""
        out_dir = Path(out_dir)
        if self.images:
            (out_dir / "plots").mkdir(parents=True, exist_ok=True)
            for name, png in self.images.items():
                (out_dir / "plots" / f"{name}.png").write_bytes(png)
        (out_dir / f"{stem}.md").write_text(self.markdown() + "\n")
        (out_dir / f"{stem}.html").write_text(self.html() + "\n")


def _cell(c: object) -> str:
    if c is None:
        return "–"
    if isinstance(c, float):
        return "–" if math.isnan(c) else f"{c:.4f}"
    return str(c)


def _md_inline_html(text: str) -> str:
    """Escape, then render markdown's `code` spans."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
