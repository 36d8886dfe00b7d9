"""Signals to the commands that start a local Ray: Ctrl-C is exit 130 with one line and resumes; SIGKILL takes the
whole Ray session along (issue 26).

Before the fix, Ctrl-C of `t2vu train --distributed` exited 1 with no message (Ray Train's own SIGINT handler), and
after SIGKILL of `t2vu train --distributed` or `t2vu tune` the session's `ray::DashboardAgent` and
`ray::RuntimeEnvAgent` lived on for 63.7 s (pipelines/runtime/ray_reaper.py). Each command runs as a real
subprocess in its own process group; only processes of that group's tree are looked at or killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
T2VU = [sys.executable, "-m", "pipelines.cli.entry"]


def _table() -> dict[int, list[tuple[int, str]]]:
    kids: dict[int, list[tuple[int, str]]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                name = (d / "cmdline").read_bytes().replace(b"\0", b" ")[:80].decode(errors="replace")
            except OSError:
                continue
            kids.setdefault(ppid, []).append((int(d.name), name))
    return kids


def descendants(pid: int) -> dict[int, str]:
    kids, out, todo = _table(), {}, [pid]
    while todo:
        for child, name in kids.get(todo.pop(), []):
            out[child] = name
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def start(argv: list[str], err: Path) -> subprocess.Popen:
    # its own session: the signal goes to its process group as a terminal's Ctrl-C would, and to nobody else's
    return subprocess.Popen(T2VU + argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err.open("w"),
                            start_new_session=True)


def wait_for(proc: subprocess.Popen, ready, what: str, limit: float = 400) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {what}")
        if ready():
            return
        time.sleep(0.25)
    proc.kill()
    pytest.fail(f"no {what} after {limit} s")


# One Ray Train worker: the subject is the command's Ray session and its signals, which a second worker does not
# change (it costs ~8 CPU-s of imports and a gloo rendezvous per run).
ONE_WORKER = ["--set", "distributed.num_workers=1"]


def train_argv(out: Path) -> list[str]:
    return ["train", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(out), "--distributed", *ONE_WORKER,
            "--set", "train.steps=400", "--set", "train.checkpoint_every=20"]


def tune_argv(out: Path) -> list[str]:
    return ["tune", "-c", str(ROOT / "configs" / "search" / "tiny.yaml"), "-o", str(out), *ONE_WORKER]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "tune"])
def test_sigkill_takes_the_ray_session_along(tmp_path, command):
    out = tmp_path / "out"
    proc = start(train_argv(out) if command == "train" else tune_argv(out), tmp_path / "err")
    try:
        # train: its deepest process, a Ray Train worker; tune: the trial actor (as deep under the raylet, and
        # ~15 CPU-s of worker-group start-up sooner)
        deepest = "RayTrainWorker" if command == "train" else "ImplicitFunc"
        wait_for(proc, lambda: any(deepest in n for n in descendants(proc.pid).values()), deepest)
        time.sleep(3)  # the agents and the worker group are all up
        tree = descendants(proc.pid)
        assert any("DashboardAgent" in n for n in tree.values()), tree
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        t0 = time.time()
        while time.time() - t0 < 20 and any(alive(p) for p in tree):
            time.sleep(0.2)
        left = {p: n for p, n in tree.items() if alive(p)}
        assert not left, f"{len(left)} processes of the killed {command}'s Ray session alive after 20 s: {left}"
    finally:
        for p in descendants(proc.pid):
            os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_ctrl_c_of_distributed_train_exits_130_and_resumes(tmp_path, ray_env):
    out = tmp_path / "out"
    argv = train_argv(out)[:-4] + ["--set", "train.steps=60", "--set", "train.checkpoint_every=20"]
    proc = start(argv, tmp_path / "err")
    tree: dict[int, str] = {}
    try:
        def checkpointed() -> bool:
            tree.update(descendants(proc.pid))
            # registered by Ray Train (in its snapshot), not just written: only then does a rerun resume from it
            snap = out / "ray" / "train" / "checkpoint_manager_snapshot.json"
            return snap.is_file() and "checkpoint_0" in snap.read_text()

        wait_for(proc, checkpointed, "checkpoint")
        os.killpg(proc.pid, signal.SIGINT)  # the whole group, as Ctrl-C in a terminal
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = (tmp_path / "err").read_text().strip().splitlines()
    assert rc == 130, lines[-5:]
    assert lines[-1].startswith("interrupted:") and "rerun the same command to resume" in lines[-1], lines[-5:]
    assert not any("Traceback" in line for line in lines)
    t0 = time.time()
    while time.time() - t0 < 20 and any(alive(p) for p in tree):
        time.sleep(0.2)
    assert not [n for p, n in tree.items() if alive(p)], "Ray processes outlived the interrupted train"
    # the resume joins the session's Ray: what is tested here is the checkpoint, not a second local Ray start
    again = subprocess.run(T2VU + argv, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ray_env)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] >= 20, summary


def test_reaper_kills_the_dead_drivers_marked_processes_and_nothing_else(tmp_path):
    """The watchdog alone, without Ray: a driver marks its environment, starts a child that inherits the mark and
    the watchdog, and is SIGKILLed; the marked child goes within seconds, an unmarked process of the same user
    (another run's Ray, say) stays."""
    driver_code = (
        "import os, subprocess, sys, time\n"
        "from pipelines.runtime.ray_reaper import mark_environment, watch_local_session\n"
        "mark_environment()\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "watch_local_session(None)\n"
        f"open({str(tmp_path / 'child.pid')!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    driver = subprocess.Popen([sys.executable, "-c", driver_code], cwd=ROOT)
    try:
        pid_file = tmp_path / "child.pid"
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and driver.poll() is None, "the driver never started its child"
            time.sleep(0.1)
        child = int(pid_file.read_text())
        time.sleep(0.5)  # the watchdog is waiting on the driver
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 30
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(child), "the marked child outlived its SIGKILLed driver by 30 s"
        assert other.poll() is None, "an unmarked process was killed"
    finally:
        other.kill()
        driver.kill()
