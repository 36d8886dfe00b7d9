"""Resolve `model.path` values: a directory, or `builtin:tiny` / `builtin:tiny-<family>` / `builtin:toy` / `builtin:toy-wan`."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOY_MODEL_DIR = ASSETS / "toy-model"
TOY_MODELS = {"builtin:toy": TOY_MODEL_DIR, "builtin:toy-wan": ASSETS / "toy-wan-model"}  # committed toy builds


def cache_root() -> Path:
    return Path(os.environ.get("T2VU_CACHE", Path.home() / ".cache" / "t2vu"))


def resolve_model_path(path: str) -> Path:
    if path == "builtin:tiny":
        from unlearn.models.tiny import make_tiny_model

        return make_tiny_model(cache_root() / "models" / "tiny-seed0", seed=0)
    if path.startswith("builtin:tiny-"):  # builtin:tiny-<family>, e.g. builtin:tiny-wan
        from unlearn.models.families import base_family, family_names, tiny_builder

        family = path.removeprefix("builtin:tiny-")
        if family not in family_names() or base_family(family) != family:
            raise ValueError(f"Unknown built-in model {path!r}; tiny models: builtin:tiny, "
                             + ", ".join(f"builtin:tiny-{f}" for f in family_names() if f != "cogvideox" and base_family(f) == f))
        return tiny_builder(family)(cache_root() / "models" / f"tiny-{family}-seed0", seed=0)
    if path in TOY_MODELS:
        d = TOY_MODELS[path]
        if not (d / "model_index.json").exists():
            flag = " --family wan" if path == "builtin:toy-wan" else ""
            raise FileNotFoundError(
                f"The built-in toy model {path} is missing at {d}; rebuild it with "
                f"`t2vu toy build{flag} DIR` and copy it there (see {d}/BUILD.md)"
            )
        return d
    if path.startswith("builtin:"):
        raise ValueError(f"Unknown built-in model {path!r}; use builtin:tiny, builtin:tiny-wan, builtin:toy, "
                         "builtin:toy-wan or a directory")
    return Path(path).expanduser()
