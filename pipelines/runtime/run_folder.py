"""Run-folder bookkeeping: an output folder remembers the configuration it was made with, and the command
that made it; one command at a time writes it; a tool replaces only the files it wrote itself.

Resuming (Tune's restore, finished stages or variants skipped, an interrupted `t2vu train`)
is only sound for the same config: with a different one a rerun would mix old and new
results or report stale ones as new. `pin_config` is the one mechanism every command uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from unlearn.config import ConfigError
from unlearn.fsutil import atomic_write_text


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def _codec(path: Path):
    if path.suffix == ".json":
        return (lambda d: json.dumps(d, indent=2)), json.loads
    return (lambda d: yaml.safe_dump(d, sort_keys=False)), yaml.safe_load


def check_pinned(path: str | Path, data: dict, output: str | Path) -> None:
    """Refuse to continue `output` if `path` records another configuration than `data` (writes nothing).

    For commands whose lower layer writes the record itself once its setup has succeeded (`t2vu
    train`): a setup that fails on bad input then leaves no record that would refuse the fixed config.
    """
    path = Path(path)
    if not path.exists():
        return
    dump, load = _codec(path)
    changed = _changed_keys(load(path.read_text()), load(dump(data)))  # normalised as on disk (tuples -> lists)
    if changed:
        shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise ConfigError(
            f"{output} holds results made with a different configuration (changed: {shown}; recorded in "
            f"{path}). Rerun with the same config and --set values to continue it, or pass a new "
            f"--output (or delete {output}) to start over."
        )


def pin_config(path: str | Path, data: dict, output: str | Path) -> None:
    """Record the configuration an output folder was made with; refuse to continue it with another.

    The record is JSON for a `.json` path, YAML otherwise; it is written once, atomically.
    """
    path = Path(path)
    check_pinned(path, data, output)
    if not path.exists():
        dump, load = _codec(path)
        atomic_write_text(path, dump(load(dump(data))))


def remove_owned(path: str | Path, root: str | Path) -> None:
    """Delete `path` (a run's own Ray folder) only if it resolves strictly inside `root`.

    The one way a command deletes a previous run's state (`--no-resume`): a name that climbs out
    of its folder (`..`, an absolute path, a symlink) is refused instead of followed.
    """
    path, root = Path(path), Path(root).resolve()
    target = path.resolve()
    if target == root or root not in target.parents:
        raise ConfigError(f"refusing to delete {path}: it resolves to {target}, outside {root}")
    if path.is_symlink():
        raise ConfigError(f"refusing to delete {path}: it is a symbolic link (to {target})")
    if target.exists():
        shutil.rmtree(target)


# ----------------------------------------------------------------------------- one folder, one writer
# Two commands writing one folder mix their files silently (B's config next to A's eraser; A's summary
# next to B's rows), and a command writing into another's folder overwrites its results. So every command
# that writes a folder holds an exclusive lock on it for its whole life and the folder records which command
# made it. `claim` is the one way a command takes a folder (pipelines/cli/commands/common.py calls it for
# every command that declares one); the Ray Train / Tune workers and the stages a command runs inside its
# own folder (`t2vu run`'s search/ and eval/, the toy benchmark's variants) never call it.
MARKER = "t2vu_run.json"  # {"command": ..., "created": ..., "files": [...] (tool outputs only)}
LOCK = "t2vu_run.lock"  # flock()ed by the writer; holds its pid, host, command and start time
BOOKKEEPING = (MARKER, LOCK)
STAGING = ".t2vu-staging."  # a tool's new outputs before they replace its old ones (dot: a temporary)

# Folders made before markers existed are recognised by the record each command pins (first match wins);
# nothing else in them is trusted.
LEGACY = (
    ("attack", ("attack_config.json",)),
    ("run", ("pipeline_state.json", "search/search_config.yaml")),
    ("toy benchmark", ("variants",)),
    ("tune", ("search_config.yaml",)),
    ("train", ("config.yaml", "eraser/eraser_config.json")),
    ("eval", ("eval_config.json", "rows")),
)

_HELD: dict[int, Path] = {}  # fd -> folder, of the locks this process holds


def _drop_inherited_locks() -> None:
    # A forked child (a DataLoader worker, a fork-started process) shares the lock's open file: closing its
    # copy (never LOCK_UN, which would unlock the parent too) keeps it from holding the folder after we exit.
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


def read_marker(folder: str | Path) -> dict | None:
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("command"), str) else None


def made_by(folder: str | Path) -> str | None:
    """The command that made `folder`: its marker, else (a folder older than markers) what its files say."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is not None:
        return marker["command"]
    for command, records in LEGACY:
        if any((folder / r).exists() for r in records):
            return command
    return None


def _content(folder: Path) -> list[Path]:
    """What is in `folder` besides this bookkeeping (and a tool's staging temporaries)."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.name not in BOOKKEEPING and not p.name.startswith(STAGING)]


def _owner_text(fd: int) -> str:
    try:
        rec = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        rec = {}
    if not rec:
        return "another process"
    return (f"pid {rec.get('pid')} on {rec.get('host')} (`{rec.get('command')}`, since {rec.get('since')})")


def _lock(folder: Path, command: str, argv: list[str] | None, fix: str) -> int:
    """flock(LOCK_EX) on folder/LOCK, refused at once if held; the kernel drops it when this process dies.

    The file is removed on release, so a process may have opened a file that is gone by the time it
    gets the lock: it checks that the locked file is still the one at the path, and retries otherwise.
    """
    path = folder / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner_text(fd)
            os.close(fd)
            raise ConfigError(
                f"{folder} is in use by {owner}: one folder takes one writer at a time. {fix}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(argv or ["t2vu", command]),
              "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    _HELD[fd] = folder
    return fd


def _unlock(fd: int) -> None:
    folder = _HELD.pop(fd, None)
    if folder is not None:
        with contextlib.suppress(OSError):
            (folder / LOCK).unlink()  # still ours (we hold it): a waiter that opened it retries
    os.close(fd)


def _refuse_foreign(folder: Path, command: str, flag: str) -> None:
    for p in folder.parents:  # explicit markers only: a config.yaml in some parent folder means nothing
        marker = read_marker(p)
        if marker is not None:
            raise ConfigError(
                f"{flag} {folder} lies inside {p}, a run folder of `t2vu {marker['command']}`: writing there would "
                f"mix into that run. Pass {flag} outside it")


@contextlib.contextmanager
def join(folder: str | Path, command: str, *, argv: list[str] | None = None) -> Iterator[Path]:
    """Hold an existing run folder for a command that adds to it (`t2vu report`): the lock of the run it belongs
    to (the nearest marked folder: `t2vu run`'s for its search/), no marker, nothing created."""
    folder = Path(folder)
    if not folder.is_dir():
        yield folder  # the command says what is wrong with it
        return
    root = next((p for p in (folder.resolve(), *folder.resolve().parents) if read_marker(p)), folder)
    fd = _lock(root, command, argv, "Wait for it to finish, then rerun")
    try:
        yield folder
    finally:
        _unlock(fd)


@contextlib.contextmanager
def claim(folder: str | Path, command: str, *, argv: list[str] | None = None, flag: str = "--output",
          tool_outputs: bool = False) -> Iterator[Path]:
    """Hold `folder` for `command` while the block runs: exclusive, and only for the command that made it.

    Refused in one line (ConfigError): a folder another process is writing (named with its pid, command and
    start time), a folder made by another command (its marker, or for older folders the config it pinned),
    a folder inside another command's run folder. A new folder gets a marker naming `command`. When the
    block ends (any exception included; a killed process's lock the kernel drops) the lock is released, and
    a folder left holding nothing but this bookkeeping (bad input refused before any output) is removed
    with the parents this call made. tool_outputs: the folder holds a tool's product (`replace_outputs`):
    unknown content is never adopted.
    """
    folder = Path(folder)
    for p in (folder, *folder.parents):
        if p.is_symlink() and not p.exists():  # mkdir would fail with a bare "File exists"
            raise ConfigError(f"{flag} {folder}: {p} is a symbolic link to {os.readlink(p)}, which does not exist; "
                              "create its target or pass another folder")
        if p.exists() and not p.is_dir():
            raise ConfigError(f"{flag} {folder}: {p} is a file, not a folder; pass a folder path (new or existing)")
    _refuse_foreign(folder.resolve(), command, flag)
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    fd = None
    try:
        fd = _lock(folder, command, argv, f"Wait for it to finish (then rerun to continue), or pass another {flag}")
        owner = made_by(folder) if _content(folder) or read_marker(folder) else None
        if owner is not None and owner != command:
            raise ConfigError(
                f"{folder} was made by `t2vu {owner}`; `t2vu {command}` would overwrite or mix into its results. "
                f"Pass another {flag} (a new folder) for this command")
        if read_marker(folder) is None and (owner == command or not _content(folder) or not tool_outputs):
            atomic_write_text(folder / MARKER, json.dumps(
                {"command": command, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")}, indent=2) + "\n")
        yield folder
    finally:
        if fd is not None:
            if not _content(folder):  # nothing but bookkeeping: this command wrote nothing, so leave nothing
                with contextlib.suppress(OSError):
                    (folder / MARKER).unlink()
            _unlock(fd)
        for p in made:  # deepest first; a folder someone else filled meanwhile stays
            with contextlib.suppress(OSError):
                p.rmdir()


def check_tracking_store(uri: str | None, output: str | Path) -> None:
    """Refuse an MLflow SQLite store inside another command's run folder: its runs and artifacts would land there."""
    if not uri or not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):].split("?", 1)[0]).resolve()
    own = Path(output).resolve()
    if own in db.parents:
        return  # this run's own database (the default), whatever its sub-stages are called
    for i, p in enumerate(db.parents):
        command = made_by(p) if i == 0 else (read_marker(p) or {}).get("command")
        if command is not None:
            raise ConfigError(
                f"mlflow.tracking_uri {uri} lies inside {p}, a run folder of `t2vu {command}`: this run's MLflow "
                f"runs and artifacts would be written into it. Use a database outside other run folders (e.g. "
                f"sqlite:///runs/mlflow.db) or leave mlflow.tracking_uri unset (default: inside --output)")


# ----------------------------------------------------------------------------- a tool's own outputs
def _files(folder: Path) -> set[str]:
    """Every file under `folder` (a symbolic link counts as a file: it is never followed), relative."""
    def leaf(p: Path) -> bool:
        return p.is_symlink() or not p.is_dir()

    return {p.relative_to(folder).as_posix() for q in _content(folder)
            for p in ([q] if leaf(q) else q.rglob("*")) if leaf(p)}


@contextlib.contextmanager
def replace_outputs(folder: str | Path, command: str, *, overwrite: bool, flag: str = "OUT",
                    inputs: tuple[str | Path, ...] = ()) -> Iterator[Path]:
    """Yield a path to write `command`'s new outputs to; when the block succeeds they replace its old ones.

    `--overwrite` deletes only what the marker lists as this command's own earlier outputs: a folder that
    holds anything else (or files of a folder older than the list) is refused before any work, and so is
    an input that lies inside the folder. The new files are staged inside the folder and moved in one
    rename each; the list is updated before and after, so a kill in between leaves nothing unlisted.
    Call inside `claim(folder, command, tool_outputs=True)`.
    """
    folder = Path(folder)
    for i in inputs:
        if Path(i).resolve().is_relative_to(folder.resolve()):
            raise ConfigError(f"{i} lies inside {flag} {folder}, which this command writes: pass an {flag} folder "
                              f"that does not contain its input")
    for stale in folder.glob(STAGING + "*"):  # a killed earlier run's (we hold the lock: nobody is using it)
        shutil.rmtree(stale, ignore_errors=True)
    marker = read_marker(folder) or {"command": command}
    listed = set(marker.get("files") or []) if marker["command"] == command else set()
    present = _files(folder)
    if present and not overwrite:
        raise ConfigError(f"{flag} {folder} already holds files; pass --overwrite to replace the ones this command "
                          f"wrote there, or another folder")
    foreign = sorted(present - listed)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(f"{flag} {folder} holds files `t2vu {command}` did not write ({shown}); it replaces only "
                          f"its own earlier outputs: move them away or choose another folder")
    stage = Path(tempfile.mkdtemp(prefix=STAGING, dir=folder))
    try:
        yield stage / "new"
        new = _files(stage / "new")

        def record(files: set[str]) -> None:
            atomic_write_text(folder / MARKER, json.dumps({**marker, "command": command, "files": sorted(files)},
                                                          indent=2) + "\n")

        record(listed | new)
        for rel in sorted(present, reverse=True):
            (folder / rel).unlink()
        for d in sorted({p for rel in present for p in (folder / rel).parents if p != folder and folder in p.parents},
                        key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()  # folders that held only our old files
        for p in (stage / "new").iterdir():
            os.replace(p, folder / p.name)
        record(new)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
