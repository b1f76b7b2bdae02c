"""The ```python examples of README.md and docs/*.md run as written.

The blocks of one page run in order in one namespace (a later block may use an earlier one's
names), in a temporary working directory. A block preceded by a `<!-- no-test -->` line is skipped
(e.g. one that needs a browser or a GPU).
"""

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^(?P<skip><!--\s*no-test\s*-->[ \t]*\n(?:[ \t]*\n)*)?```python[ \t]*\n(?P<code>.*?)^```",
                   re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, skipped) of every ```python block."""
    return [(text.count("\n", 0, m.start("code")) + 1, m.group("code"), bool(m.group("skip")))
            for m in FENCE.finditer(text)]


def test_block_extraction():
    text = ("intro\n```python\na = 1\n```\n<!-- no-test -->\n```python\nb = 2\n```\n"
            "```bash\nls\n```\n<!-- no-test -->\n\n```python\nc = 3\n```\n")
    assert python_blocks(text) == [(3, "a = 1\n", False), (7, "b = 2\n", True), (15, "c = 3\n", True)]


@pytest.mark.parametrize("page", [p for p in PAGES if p.is_file()], ids=lambda p: p.name)
def test_examples_run(page, tmp_path, monkeypatch):
    blocks = [(line, code) for line, code, skip in python_blocks(page.read_text(encoding="utf-8"))
              if not skip]
    if not blocks:
        pytest.skip(f"{page.name} has no runnable python examples")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    try:
        for line, code in blocks:
            try:
                exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"{page.relative_to(ROOT)} example at line {line} failed: "
                                     f"{type(e).__name__}: {e}") from e
    finally:
        torch.set_num_threads(threads)
