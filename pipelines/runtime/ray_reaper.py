"""Take a local Ray session down with the process that started it, even when that process is SIGKILLed.

Why: Ray ties its GCS and raylet to the driver, but the raylet's agents (`ray::DashboardAgent`,
`ray::RuntimeEnvAgent`) notice the raylet's death only after five checks and then try to report it to a GCS that
is already gone, so after `kill -9` of `t2vu train --distributed` or `t2vu tune` they lived for another 60 s
(measured: 63.7 s until the last process of the session was gone). A Ctrl-C or a normal exit is not the problem:
`ray.shutdown()` stops them.

How: before `ray.init` starts a local Ray, `mark_environment()` puts a marker naming this process (pid and
start time, so a reused pid never matches) into the environment every Ray process inherits; after it,
`watch_local_session(session_dir)` starts this file as a small watchdog in its own session (a Ctrl-C to the
terminal's process group does not reach it). The watchdog waits for the driver to exit, then SIGKILLs every
process that carries the marker or holds a file open in the session's folder (the agents rename themselves with
setproctitle, which overwrites the environment /proc shows, but they keep their session log files open): this
session's processes only, never another user's or another run's Ray. Stdlib only: it runs as a plain script.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

MARK = "T2VU_RAY_OWNER"


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" once it is gone or a zombie)."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


def owner_id() -> str:
    return f"{os.getpid()}:{start_time(os.getpid())}"


def mark_environment() -> None:
    """Before `ray.init`: every process the local Ray starts inherits the marker naming this process."""
    os.environ[MARK] = owner_id()


def watch_local_session(session_dir: str | None) -> None:
    """After `ray.init`: start the watchdog of this process's local Ray session (Linux only)."""
    if sys.platform.startswith("linux") and os.environ.get(MARK) == owner_id():
        subprocess.Popen([sys.executable, "-S", os.path.abspath(__file__), owner_id(), session_dir or ""],
                         start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, close_fds=True)


def _in_session(d: Path, needle: bytes, session: str) -> bool:
    if needle in (d / "environ").read_bytes().split(b"\0"):
        return True
    if not session:
        return False
    if session in (d / "cmdline").read_bytes().decode(errors="replace"):
        return True
    for fd in (d / "fd").iterdir():
        try:
            if os.readlink(fd).startswith(session):
                return True
        except OSError:
            continue
    return False


def session_processes(owner: str, session_dir: str) -> list[int]:
    """Processes started with MARK=owner in their environment or holding a file under session_dir (the watchdog
    itself excluded)."""
    needle = f"{MARK}={owner}".encode()
    session = session_dir.rstrip("/") + "/" if session_dir else ""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if _in_session(d, needle, session):
                    found.append(int(d.name))
            except OSError:  # gone meanwhile, or another user's
                continue
    return found


def wait_for_exit(pid: int, started: str) -> None:
    try:
        fd = os.pidfd_open(pid)  # readable the moment the process exits: no polling delay
    except (OSError, AttributeError):
        fd = None
    if fd is not None:
        if start_time(pid) == started:  # the pidfd is of the driver, not of a process that reused its pid
            select.select([fd], [], [])
        os.close(fd)
        return
    while start_time(pid) == started:
        time.sleep(0.5)


def main(owner: str, session_dir: str) -> None:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # outlive the driver's terminal and its process group
    pid, _, started = owner.partition(":")
    wait_for_exit(int(pid), started)
    deadline = time.monotonic() + 30  # processes still starting when the driver died get their turn too
    while time.monotonic() < deadline:
        left = session_processes(owner, session_dir)
        if not left:
            return
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
