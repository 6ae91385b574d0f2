"""A headless Chromium driven over the DevTools protocol (tests only): open a page, wait for text, click, read the
page's text, save a screenshot. Chromium comes from Debian's packages (``scripts/setup_browser.sh``)."""

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
