"""Write sections of docs/BENCHMARKS.md in place: a section is everything from its
``## `` heading to the next one. Sections the runner does not own (the fan-out
benchmark's own section) are left exactly as they are."""

from __future__ import annotations

from pathlib import Path

HEADER = """# Benchmarks

Benchmarks are programs, not tests: their figures depend on the machine. Each
section gives the command, what it measures, and the figures of one run.
"""


def _split(text: str) -> tuple[str, list[tuple[str, str]]]:
    preamble: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("## "):
            sections.append((line[3:].strip(), [line]))
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    return "\n".join(preamble), [(title, "\n".join(body)) for title, body in sections]


def update(path: Path, sections: dict[str, str]) -> None:
    """Replace (or append) each ``title -> body`` section, keeping the others."""
    text = path.read_text() if path.exists() else HEADER
    preamble, existing = _split(text)
    titles = {title for title, _ in existing}
    rendered = [
        (title, f"## {title}\n\n{sections[title].strip()}\n" if title in sections else body)
        for title, body in existing
    ]
    rendered += [
        (title, f"## {title}\n\n{body.strip()}\n")
        for title, body in sections.items()
        if title not in titles
    ]
    parts = [preamble.rstrip() + "\n"] + [body.rstrip() + "\n" for _, body in rendered]
    path.write_text("\n".join(parts))
