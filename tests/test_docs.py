"""The ```python examples of README.md and docs/*.md run as written.

The blocks of one page run in order in one namespace (a later block may use an earlier one's
names), in a fresh interpreter whose working directory is a temporary folder. A block preceded by
a `<!-- no-test -->` line is skipped (e.g. one that needs a browser or a GPU).
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


RUNNER = """
import json, sys, traceback
blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for name, code in blocks:
    try:
        exec(compile(code, name, "exec"), namespace)
    except BaseException:
        sys.stderr.write("FAILED " + name + "\\n" + traceback.format_exc())
        sys.exit(1)
"""


@pytest.mark.parametrize("page", [p for p in PAGES if p.is_file()], ids=lambda p: p.name)
def test_examples_run(page, tmp_path):
    """A fresh interpreter per page, as a reader would run it; one thread, cwd a temporary folder."""
    blocks = [(f"{page.relative_to(ROOT)}:{line}", code)
              for line, code, skip in python_blocks(page.read_text(encoding="utf-8")) if not skip]
    if not blocks:
        pytest.skip(f"{page.name} has no runnable python examples")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), text=True,
                       capture_output=True, cwd=tmp_path, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "is deprecated; use" not in p.stderr, p.stderr[-3000:]  # the docs speak the current vocabulary


BLOCK = re.compile(r"^```(?P<lang>[\w-]*)[ \t]*\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL)
SHELL = {"", "bash", "sh", "shell", "console", "text"}
COMMAND = re.compile(r"\brobustlab (?P<cmd>[a-z][\w-]*)(?P<rest>[^#\n]*)")


def old_spellings() -> dict[str, set[str]]:
    """Each command's old option spellings: the ones it still accepts with a deprecation note."""
    import argparse

    from robustlab.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {s for a in p._actions if type(a).__name__ == "_Deprecated" for s in a.option_strings}
            for name, p in sub.choices.items()}


def test_command_lines_use_the_current_option_names():
    """Every `robustlab COMMAND …` line in a code block of the docs uses the current spelling of
    each option (docs/cli.md's table of old spellings is prose, not a code block)."""
    old = old_spellings()
    assert {"--norm", "--step-size", "--seed0"} <= old["train"] and "--scheme" in old["biterrors"]
    stale = []
    for page in PAGES:
        if not page.is_file():
            continue
        for block in BLOCK.finditer(page.read_text(encoding="utf-8")):
            if block.group("lang") not in SHELL:
                continue
            code = re.sub(r"\\\n\s*", " ", block.group("code"))  # one line per command
            for m in COMMAND.finditer(code):
                used = set(re.findall(r"(?<!\S)--[\w-]+", m.group("rest")))
                stale += [f"{page.name}: robustlab {m.group('cmd')} {flag}"
                          for flag in sorted(used & old.get(m.group("cmd"), set()))]
    assert not stale, stale
