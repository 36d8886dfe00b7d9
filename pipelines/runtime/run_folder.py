"""Run-folder bookkeeping: an output folder remembers the configuration it was made with.

Resuming (Tune's restore, finished stages or variants skipped, an interrupted `t2vu train`)
is only sound for the same config: with a different one a rerun would mix old and new
results or report stale ones as new. `pin_config` is the one mechanism every command uses.
"""

from __future__ import annotations

import json
import shutil
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
