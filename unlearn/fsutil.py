"""Atomic writes: a file or a whole directory appears complete or not at all.

The one write mechanism of the project (erasers, checkpoints, embedding-cache entries,
model directories, eval rows/videos, run metadata), so a killed process never leaves a
half-written artifact that a rerun would trust. One durability rule for all of them:

- content goes to a temporary sibling (same filesystem, so the rename is atomic), is
  flushed and fsync'ed, then `os.replace`d over the target;
- files get mode 0666 & ~umask (0644 under the usual umask 022), directories 0777 & ~umask:
  the modes a plain `open()`/`mkdir` would give. `mkstemp`/`mkdtemp` create 0600/0700, which
  hid results from the other users of a shared storage volume; a team that wants them
  private sets its umask (e.g. 077) and gets 0600/0700 everywhere.
- the parent directory is fsync'ed after the rename where the OS allows it, so the rename
  itself survives a power loss (costs ~1 ms per file on local disks).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~_umask()


def dir_mode() -> int:
    return 0o777 & ~_umask()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and Windows) refuse fsync on a directory
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; when the block ends cleanly it becomes `path`.

    For writers that need a file name (np.save, safetensors, ffmpeg): the temp name keeps
    `path`'s suffix so format detection by extension still works. On an exception the
    temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (eraser digests, checkpoint manifests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_temp(p: Path) -> bool:
    # atomic_path / atomic_replace_dir name their temporaries `.<name>.XXXX...`; project artifacts never start with "."
    return p.name.startswith(".")


def finished_files(folder: str | Path, pattern: str = "*") -> list[Path]:
    """The files under `folder` matching `pattern` that a write finished, sorted.

    Temporary files of a write in progress (or of a killed one) are dot-prefixed siblings that
    keep the target's suffix (`.t00000.k3j9.tmp.json`), so a bare `glob("*.json")` on a live
    folder also lists them; every reader of a folder another process may be writing uses this.
    """
    return sorted(p for p in Path(folder).glob(pattern) if p.is_file() and not _is_temp(p))


_ATOMIC_TEMP = re.compile(r"\..+\.tmp(\.[^.]+)?")  # atomic_path's `.<stem>.<random>.tmp<suffix>`


def temp_files(folder: str | Path) -> list[Path]:
    """Temporary files directly in `folder`: a write in progress, or one a killed process left behind.

    Only names atomic_path makes: a rerun deletes these, and the folder may hold a user's own dot-files
    (`t2vu eval -o .` in a project: `.env`, `.gitignore`), which are not ours to delete.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and _ATOMIC_TEMP.fullmatch(p.name))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a failed write (a full disk) names no file by itself
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write text (UTF-8, newlines as given) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` through a Python file write: torch's own writer reports a full disk as "basic_ios::clear:
    iostream error" (a RuntimeError without errno or file name); this way it is an OSError naming the file."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def json_default(o: Any):
    if isinstance(o, Path):
        return str(o)
    item = getattr(o, "item", None)  # numpy / torch scalars
    if callable(item):
        return item()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=json_default) + "\n")


def atomic_replace_dir(target: str | Path, fill: Callable[[Path], None]) -> Path:
    """Call `fill(tmpdir)` on a sibling temp dir, then swap it in for `target` (replacing any old one).

    Between removing an old `target` and renaming the new one in there is a moment with no
    `target`; readers treat a missing directory as "not written yet", never as corrupt.
    """
    target = Path(target)
    for p in (target, *target.parents):  # checked before any work: a file would only fail at the final swap
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(f"{p} is a file, not a folder; choose a folder path for {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        _fsync_tree(tmp)
        for p in [tmp, *tmp.rglob("*")]:
            os.chmod(p, dir_mode() if p.is_dir() else file_mode())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def atomic_copy_dir(src: str | Path, dst: str | Path) -> Path:
    """Publish a copy of directory `src` at `dst` atomically (replacing any old `dst`)."""
    return atomic_replace_dir(dst, lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))
