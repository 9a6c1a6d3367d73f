"""Open a page in Debian's headless Chromium through the DevTools protocol and report what the page did.

Only the page's own target is watched, so Chromium's background traffic (updates, time) is not mistaken for
requests made by the report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "Chromium absent : `apt-get install chromium` (installé par .ci/run)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class Rendered:
    requests: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes = b""


class _Page:
    def __init__(self, ws: Any) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == self.next_id:
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))


def render(page: Path, script: str) -> Rendered:
    """Load ``page``, then evaluate ``script`` (an expression returning JSON-able facts about the DOM)."""
    from websockets.sync.client import connect

    profile = tempfile.mkdtemp(prefix="spie-chromium-")
    process = subprocess.Popen([chromium(), *CHROMIUM_FLAGS, "--remote-debugging-port=0", f"--user-data-dir={profile}",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium n'a pas ouvert son port DevTools")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        target = next(t for t in targets if t["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
            tab = _Page(ws)
            tab.call("Network.enable")
            tab.call("Page.enable")
            tab.call("Page.navigate", url=page.resolve().as_uri())
            tab.wait_for("Page.loadEventFired")
            result = tab.call("Runtime.evaluate", expression=f"JSON.stringify({script})", returnByValue=True)
            shot = tab.call("Page.captureScreenshot", format="png")
            rendered = Rendered(facts=json.loads(result["result"]["value"]))
            import base64

            rendered.screenshot = base64.b64decode(shot.get("data", ""))
            rendered.requests = [e["params"]["request"]["url"] for e in tab.events
                                 if e.get("method") == "Network.requestWillBeSent"]
            return rendered
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)
