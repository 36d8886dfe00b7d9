"""Register test plugins the way a user's package does: an installed distribution's metadata (a
`*.dist-info` folder with `entry_points.txt`) on sys.path, read by `importlib.metadata` — the same lookup
`unlearn.plugins` makes for a package installed with pip. Spawned scorer processes inherit sys.path, so
they see it too."""

from __future__ import annotations

from pathlib import Path


def entry_point_site(root: Path, entries: dict[str, str], group: str = "t2vu.classifiers",
                     name: str = "t2vu_test_plugins") -> Path:
    """A folder holding one distribution `name` whose entry points `entries` (name -> "module:attr") are in
    `group`; put it on sys.path (monkeypatch.syspath_prepend) to 'install' it."""
    site = Path(root) / f"site-{name}"
    dist = site / f"{name}-0.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    return site
