"""The docs cannot go stale: every fenced ```python block in README.md and docs/*.md runs here.

Rules:

- The blocks of one Markdown file run in order, in one shared namespace (a later block may use names an
  earlier one made), in a fresh temporary working directory (files they write land there), with
  ``torch.set_num_threads(1)`` and the global RNG seeded (both restored afterwards). Each file is one
  test; a failure names the file and the line, as ``docs/x.md:LINE``, and the traceback points at the
  Markdown lines themselves.
- Only ```python fences run; ```bash, ```text, plain ``` (printed output) and the rest do not.
- A python block that cannot run here (needs a data folder, a GPU, torchrun, minutes of compute, or is
  a fragment) carries, on the line right before its fence, the marker

      <!-- not run: THE REASON -->

  The reason is mandatory: a marker without one fails ``test_not_run_markers_give_a_reason``, and so
  does a marker that is not followed by a ```python fence.
- docs/extending.md is left out: tests/test_extending.py runs its blocks and checks what they made.
- Keep the whole file well under 90 s on 2 CPU cores: a block that needs longer is made tinier in the
  doc (``digits`` or ``mnist5k``, a few iterations, ``model_kwargs={"width": 8}``) or marked
  ``<!-- not run: takes N minutes on 2 CPU cores -->``. ``test_few_blocks_are_not_run`` caps the count.
- Printed output shown in the docs is not compared (the last digits of trained accuracies depend on the
  CPU and the thread count); check it by hand when a block changes.
"""

from __future__ import annotations

import re
import textwrap
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SKIP_FILES = {"docs/extending.md"}  # tests/test_extending.py runs it
MARKER = re.compile(r"^\s*<!--\s*not run\s*(?::\s*(?P<reason>.*?))?\s*-->\s*$")
FENCE = re.compile(r"^\s*(?P<ticks>```+|~~~+)\s*(?P<lang>[\w+-]*)")
NOT_RUN_CEILING = 6  # python blocks marked not run, all files together; see test_few_blocks_are_not_run


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    code: str
    skip: str | None  # the not-run reason, or None when the block runs


def doc_files() -> list[str]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [str(f.relative_to(ROOT)) for f in files if str(f.relative_to(ROOT)) not in SKIP_FILES]


def parse(text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """The python blocks of a Markdown text, and the problems with its not-run markers (line, what)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        if marker:
            nxt = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            if not (marker.group("reason") or "").strip():
                problems.append((i + 1, "a not-run marker without a reason"))
            if nxt is None or nxt.group("lang") != "python":
                problems.append((i + 1, "a not-run marker not right before a ```python fence"))
        fence = FENCE.match(lines[i])
        if fence:
            ticks = fence.group("ticks")
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(ticks):
                end += 1
            if fence.group("lang") == "python":
                prev = MARKER.match(lines[i - 1]) if i else None
                reason = ((prev.group("reason") or "").strip() or "(no reason given)") if prev else None
                blocks.append(Block(i + 1, textwrap.dedent("\n".join(lines[i + 1 : end]) + "\n"), reason))
            i = end
        i += 1
    return blocks, problems


def _blocks(rel: str) -> list[Block]:
    return parse((ROOT / rel).read_text())[0]


RUNNABLE = [rel for rel in doc_files() if _blocks(rel)]


def test_the_parser_finds_blocks_and_markers():
    text = "\n".join(
        [
            "```python",
            "a = 1",
            "```",
            "<!-- not run: needs a GPU -->",
            "```python",
            "b = 2",
            "```",
            "```bash",
            "echo no",
            "```",
            "```",
            "printed",
            "```",
            "<!-- not run -->",
            "```python",
            "```",
            "<!-- not run: stray -->",
            "",
        ]
    )
    blocks, problems = parse(text)
    assert [(b.line, b.code, b.skip) for b in blocks] == [
        (1, "a = 1\n", None),
        (5, "b = 2\n", "needs a GPU"),
        (15, "\n", "(no reason given)"),
    ]
    assert problems == [
        (14, "a not-run marker without a reason"),
        (17, "a not-run marker not right before a ```python fence"),
    ]


def test_not_run_markers_give_a_reason():
    bad = [f"{rel}:{line}: {what}" for rel in doc_files() for line, what in parse((ROOT / rel).read_text())[1]]
    assert not bad, "\n".join(bad)


def test_few_blocks_are_not_run():
    not_run = [f"{rel}:{b.line}: {b.skip}" for rel in doc_files() for b in _blocks(rel) if b.skip]
    assert len(not_run) <= NOT_RUN_CEILING, (
        "more python blocks are marked not run than before: can the new one run on tiny settings "
        "(digits or mnist5k, a few iterations, model_kwargs={'width': 8})? If not, raise NOT_RUN_CEILING.\n"
        + "\n".join(not_run)
    )


@pytest.mark.parametrize("rel", RUNNABLE)
def test_doc_blocks_run(rel, tmp_path, monkeypatch):
    blocks = _blocks(rel)
    run = [b for b in blocks if b.skip is None]
    if not run:
        pytest.skip("; ".join(f"{rel}:{b.line} not run: {b.skip}" for b in blocks))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("FASTDD_DATA", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    scope: dict = {"__name__": "__main__"}
    failure = None
    try:
        with torch.random.fork_rng(devices=[]):  # the global RNG seeded here, restored afterwards
            torch.manual_seed(0)
            for b in run:
                try:
                    # padded with blank lines, so the code's line numbers are the Markdown file's
                    exec(compile("\n" * b.line + b.code, str(ROOT / rel), "exec"), scope)
                except Exception as e:
                    failure = _describe(rel, b, e)
                    break
    finally:
        torch.set_num_threads(threads)
    if failure:
        pytest.fail(failure, pytrace=False)


def _describe(rel: str, block: Block, e: Exception) -> str:
    """``docs/x.md:LINE: the block raised ...``, the failing line, and the traceback from the block down."""
    tb = e.__traceback__.tb_next if e.__traceback__ else None  # drop this file's exec() frame
    lines = [f.lineno for f in traceback.extract_tb(tb) if f.filename == str(ROOT / rel)]
    if isinstance(e, SyntaxError) and e.lineno:
        lines.append(e.lineno)
    at = f" (at {rel}:{lines[-1]})" if lines else ""
    trace = "".join(traceback.format_exception(type(e), e, tb))
    return f"{rel}:{block.line}: the block raised {type(e).__name__}: {e}{at}\n\n{trace}"
