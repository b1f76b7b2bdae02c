"""Check that a report renders: load it in headless Chromium and read back what the page saw.

The report's inline script writes, once the page has loaded, the number of images, each image's
natural size and any load/script errors into `<div id="render-status">`; `render()` dumps the DOM
after load and parses that element, and collects every console message Chromium logged (the
report itself logs nothing, so any message — a script error, a blocked network request — is a
problem). Chromium runs with a fresh profile and no network-facing background services.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio"]


def find_browser() -> str | None:
    """Path of a Chromium-family browser, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="robustlab-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
               *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _console(stderr: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r":CONSOLE[^\]]*\] (.*)", stderr)]


def render(path: str | Path, *, screenshot: str | Path | None = None, width: int = 1400,
           height: int = 3000, timeout: float = 120.0, browser: str | None = None) -> dict[str, Any]:
    """Load `path` in headless Chromium; returns {ready, images, sizes: [(w, h)], errors, console}
    and, with `screenshot`, writes a PNG of the top `width`×`height` pixels of the page."""
    browser = browser or find_browser()
    if browser is None:
        raise FileNotFoundError("no Chromium browser found (install the Debian package chromium)")
    url = Path(path).resolve().as_uri()
    p = _run(browser, ["--virtual-time-budget=10000", "--dump-dom", url], timeout)
    m = re.search(r'<div id="render-status"([^>]*)>', p.stdout)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1))) if m else {}
    sizes = []
    for item in attrs.get("data-sizes", "").split():
        w, _, h = item.partition("x")
        sizes.append((int(w), int(h)))
    out = {"ready": attrs.get("data-ready") == "1", "images": int(attrs.get("data-images", "0") or 0),
           "sizes": sizes, "errors": [e for e in html.unescape(attrs.get("data-errors", "")).split("; ")
                                      if e],
           "console": _console(p.stderr), "returncode": p.returncode}
    if screenshot is not None:
        shot = _run(browser, [f"--window-size={width},{height}", f"--screenshot={Path(screenshot).resolve()}",
                              "--virtual-time-budget=10000", url], timeout)
        out["console"] += [c for c in _console(shot.stderr) if c not in out["console"]]
        out["screenshot"] = str(screenshot) if Path(screenshot).is_file() else None
    return out
