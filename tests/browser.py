"""A headless Chromium driven over the DevTools protocol (tests only): open a page, wait for text, read the page's
text and a grid's rows, click controls by their ARIA role and name, save a screenshot. Chromium comes from Debian's
packages, installed by ``scripts/setup_browser.sh`` (an optional step of ``scripts/setup.sh``), never by a test.

Why not Playwright (measured with playwright 1.65.3 on x86-64 Linux): its wheel is 54 MB and installs to
167 MB (146 MB of it a bundled Node.js binary that runs its driver, 14 MB the driver's JavaScript) plus greenlet
(2.6 MB), even when it drives the system Chromium (``executable_path``) instead of downloading its own. This driver is
one file of about 180 lines, and its one dependency, websocket-client, is pure Python (1 MB installed). The tests need
only navigate / text / click / screenshot, so the hand-written driver stays."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

BINARIES = ("chromium-headless-shell", "chromium")


def find_chromium() -> Optional[str]:
    return next((shutil.which(b) for b in BINARIES if shutil.which(b)), None)


def row_of(rows: list[str], text: str) -> Optional[int]:
    """The index of the first of ``Browser.grid_rows()`` with a line of text equal to ``text``, or None."""
    return next((i for i, row in enumerate(rows) if text in row.split("\n")), None)


# the page-side halves of Browser.click and Browser.grid_rows
_CLICK = """(role, name, cell) => {
  const lines = (e) => (e.innerText || '').split('\\n').map((l) => l.trim());
  const selector = {button: 'button, [role=button]', link: 'a[href], [role=link]'}[role] || `[role=${role}]`;
  const scopes = cell === null ? [document]
    : [...document.querySelectorAll('[role=gridcell]')].filter((c) => lines(c).includes(cell));
  const found = scopes.flatMap((s) => [...s.querySelectorAll(selector)]).filter(
    (e) => name === null || (e.getAttribute('aria-label') || e.innerText || '').trim() === name);
  found.forEach((e) => e.click());
  return found.length;
}"""
_ROWS = """() => {
  const rows = new Map();
  for (const r of document.querySelectorAll('[role=row][aria-rowindex]')) {
    if (r.querySelector('[role=columnheader]')) continue;
    const i = Number(r.getAttribute('aria-rowindex'));
    const text = r.innerText.trim();
    rows.set(i, [...(rows.get(i) || []), ...(text ? [text] : [])]);
  }
  return [...rows.keys()].sort((a, b) => a - b).map((i) => rows.get(i).join('\\n')).filter((t) => t);
}"""


class Browser:
    """``with Browser() as b: b.open(url); b.wait_for_text("sft"); b.screenshot(path)``."""

    def __init__(self, width: int = 1600, height: int = 1000, timeout: float = 60.0):
        import websocket  # websocket-client, from the dev extra

        binary = find_chromium()
        if binary is None:
            raise RuntimeError("no Chromium: run scripts/setup_browser.sh")
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="chromium-")
        self._proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--user-data-dir={self._profile}", "--remote-debugging-port=0", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        port = None
        deadline = time.time() + timeout
        while port is None and time.time() < deadline:  # "DevTools listening on ws://127.0.0.1:PORT/..."
            line = self._proc.stderr.readline()
            match = re.search(r"DevTools listening on ws://[\d.]+:(\d+)/", line)
            port = int(match.group(1)) if match else None
            if not line and self._proc.poll() is not None:
                raise RuntimeError(f"Chromium exited with {self._proc.returncode}")
        if port is None:
            raise RuntimeError("Chromium did not open its DevTools port")
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        self._ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params) -> dict:
        """One DevTools command; returns its result (events that arrive meanwhile are dropped)."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        return self.eval("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout: Optional[float] = None) -> str:
        """Wait until the page's text holds every needle; returns the text (raises with what was there)."""
        deadline = time.time() + (timeout or self.timeout)
        text = ""
        while time.time() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.5)
        missing = [n for n in needles if n not in text]
        raise AssertionError(f"page text lacks {missing}; it has:\n{text[:3000]}")

    def click_all(self, selector: str) -> int:
        """Click every element matching a CSS selector; returns how many."""
        return self.eval(f"(() => {{ const els = [...document.querySelectorAll({json.dumps(selector)})];"
                         " els.forEach(e => e.click()); return els.length; })()")

    def click(self, role: str, name: Optional[str] = None, cell: Optional[str] = None) -> int:
        """Click every control of an ARIA role (``button`` also means a ``<button>``, ``link`` an ``<a href>``) whose
        accessible name (its ``aria-label``, else its text) is ``name``, when given, and that sits in a grid cell
        (``role=gridcell``) with a line of text ``cell``, when given; returns how many."""
        return self.eval(f"({_CLICK})({json.dumps(role)}, {json.dumps(name)}, {json.dumps(cell)})")

    def grid_rows(self) -> list[str]:
        """The text of a grid's data rows (``role=row`` without column headers), in their order on screen
        (``aria-rowindex``): one string per row, its cells' texts joined by newlines, the parts of a row split over
        pinned and scrolling column containers put back together."""
        return self.eval(f"({_ROWS})()")

    def wait_for_rows(self, *names: str, timeout: Optional[float] = None) -> list[str]:
        """Wait until, for every name, some grid row has a line of text equal to it; returns the rows."""
        deadline = time.time() + (timeout or self.timeout)
        rows: list[str] = []
        while time.time() < deadline:
            rows = self.grid_rows()
            if all(row_of(rows, n) is not None for n in names):
                return rows
            time.sleep(0.5)
        missing = [n for n in names if row_of(rows, n) is None]
        raise AssertionError(f"no grid row shows {missing}; the rows are:\n" + "\n--\n".join(rows))

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._ws.close()
        finally:  # the whole process group: Chromium's renderer and GPU processes outlive their parent otherwise
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
