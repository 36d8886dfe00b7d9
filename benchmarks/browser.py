"""Headless Chromium driven over its DevTools pipe (stdlib only): open a page, wait until it has rendered,
evaluate JavaScript in it, save a screenshot and its DOM.

Why not `chromium --screenshot`: it shoots at the load event, before a single-page app (the MLflow UI)
has drawn anything; `--virtual-time-budget` hangs on pages that poll. Here a page is ready when an
expression the caller gives is true. The DevTools protocol runs over `--remote-debugging-pipe` (fd 3 in,
fd 4 out, NUL-separated JSON): no port, no websocket library.

    python benchmarks/browser.py URL OUT.png [--until JS] [--click CSS]... [--size 1600x900] [--timeout 120]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _log():
    return open(os.environ.get("T2VU_CHROMIUM_LOG", os.devnull), "ab")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium with one page; `with Browser() as b: b.open(url, until=...)`."""

    def __init__(self, size: tuple[int, int] = (1600, 900), exe: str | None = None):
        exe = exe or chromium_path()
        if not exe:
            raise FileNotFoundError("chromium not found (Debian: apt-get install chromium)")
        import tempfile

        self._profile = tempfile.mkdtemp(prefix="t2vu-chromium-")  # a fresh profile: nothing cached between runs
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds():  # the child's fd 3 reads our commands, fd 4 writes its answers
            import fcntl

            # via fds >= 10: the pipes may themselves be 3 and 4 (dup2 onto itself would keep close-on-exec)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome_r, from_chrome_w)]
            for fd, target in zip(high, (3, 4)):
                os.dup2(fd, target)  # inheritable
                os.close(fd)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-pipe",
             f"--window-size={size[0]},{size[1]}", "--no-first-run", "--user-data-dir=" + self._profile, "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=_log(), preexec_fn=fds,
            close_fds=False, start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=size[0], height=size[1],
                  deviceScaleFactor=1, mobile=False)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            if time.time() > deadline:
                raise TimeoutError(f"chromium did not answer {method} in {timeout:g} s")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited")
            self._buf += chunk

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        r = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def open(self, url: str, until: str = "document.readyState === 'complete'", timeout: float = 120,
             settle: float = 1.0) -> None:
        """Navigate and wait until `until` is true (then `settle` seconds for the last paint)."""
        self.call("Page.navigate", session=True, url=url)
        deadline = time.time() + timeout
        while not self.eval(f"(() => {{ try {{ return !!({until}); }} catch (e) {{ return false; }} }})()"):
            if time.time() > deadline:
                raise TimeoutError(f"{url}: not ready in {timeout:g} s ({until})")
            time.sleep(0.5)
        time.sleep(settle)

    def screenshot(self, path: str | Path) -> Path:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def dom(self) -> str:
        return self.eval("document.documentElement.outerHTML")

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - already gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url")
    ap.add_argument("out", help="the screenshot (PNG); the DOM goes next to it as .html")
    ap.add_argument("--until", default="document.readyState === 'complete'", help="JavaScript: the page is ready")
    ap.add_argument("--click", action="append", default=[], help="CSS selector clicked (if present) before the shot")
    ap.add_argument("--size", default="1600x900")
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args(argv)
    w, h = (int(x) for x in a.size.split("x"))
    try:
        with Browser((w, h)) as b:
            b.open(a.url, until=a.until, timeout=a.timeout)
            for sel in a.click:
                b.eval(f"document.querySelector({json.dumps(sel)})?.click()")
            if a.click:
                time.sleep(1.0)
            b.screenshot(a.out)
            Path(a.out).with_suffix(".html").write_text(b.dom())
    except (FileNotFoundError, TimeoutError, RuntimeError) as exc:
        print(f"browser: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
