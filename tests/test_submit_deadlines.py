"""`t2vu submit` ends in one line within its deadline whatever sits at the address (issue 26).

Before: a listener that accepted and never answered hung `t2vu submit` for over 300 s (Ray's Jobs client
sends its requests without a timeout); a web server that is not Ray gave a traceback.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _submit(address: str, timeout_s: str = "3") -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "T2VU_SUBMIT_TIMEOUT_S": timeout_s}
    env.pop("RAY_AUTH_MODE", None)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "pipelines.cli.entry", "submit", "--address", address, "--",
                        "make-tiny-model", "x"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    return r, time.time() - t0


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    text = r.stdout + r.stderr
    assert "Traceback" not in text, text[-2000:]
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, text[-2000:]
    return errors[0]


def test_a_listener_that_never_answers_ends_at_the_deadline():
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)  # the kernel accepts connections; nobody ever reads or answers
        port = srv.getsockname()[1]
        r, took = _submit(f"http://127.0.0.1:{port}")
    assert r.returncode == 2
    line = _one_error_line(r)
    assert f"127.0.0.1:{port}" in line and "did not answer within 3 s" in line and "T2VU_SUBMIT_TIMEOUT_S" in line
    assert took < 60  # startup of the CLI + the 3 s deadline, not minutes


class _NotRay(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # an ordinary web server: a page, no /api/version JSON
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_web_server_that_is_not_ray_is_named():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotRay)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        r, _ = _submit(f"http://127.0.0.1:{srv.server_address[1]}")
    finally:
        srv.shutdown()
    assert r.returncode == 2
    assert "is not a Ray dashboard" in _one_error_line(r)
