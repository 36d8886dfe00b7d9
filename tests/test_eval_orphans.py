"""A SIGKILLed `t2vu eval` leaves no scorer process or resource tracker behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def children_of(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(d.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_killing_eval_takes_its_scorer_and_tracker_along(tmp_path):
    cmd = [sys.executable, "-m", "pipelines.cli.entry", "eval", "-c", str(ROOT / "configs" / "eval" / "tiny.yaml"),
           "-o", str(tmp_path / "ev"), "--set", "runtime.scorer=process", "--set", "generation.num_inference_steps=30",
           "--set", "runtime.progress=false"]
    env = {**os.environ, "T2VU_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        kids: set[int] = set()
        while time.time() < deadline and len(kids) < 2:  # the resource tracker and the scorer
            kids = children_of(proc.pid)
            time.sleep(0.2)
        assert len(kids) >= 2, f"scorer process never started (children {kids})"
        time.sleep(1.0)  # let the scorer finish its start-up (its watchdog starts in the initializer)
        kids = children_of(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while time.time() < deadline and any(alive(k) for k in kids):
            time.sleep(0.2)
        left = [k for k in kids if alive(k)]
        assert not left, f"processes outlived the killed eval: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
