"""Resolve `model.path` values: a directory, or `builtin:tiny` / `builtin:toy`."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOY_MODEL_DIR = ASSETS / "toy-model"


def cache_root() -> Path:
    return Path(os.environ.get("T2VU_CACHE", Path.home() / ".cache" / "t2vu"))


def resolve_model_path(path: str) -> Path:
    if path == "builtin:tiny":
        from unlearn.models.tiny import make_tiny_model

        return make_tiny_model(cache_root() / "models" / "tiny-seed0", seed=0)
    if path == "builtin:toy":
        if not (TOY_MODEL_DIR / "model_index.json").exists():
            raise FileNotFoundError(
                f"The built-in toy model is missing at {TOY_MODEL_DIR}; rebuild it with "
                "`t2vu toy build unlearn/assets/toy-model` (see unlearn/assets/toy-model/BUILD.md)"
            )
        return TOY_MODEL_DIR
    if path.startswith("builtin:"):
        raise ValueError(f"Unknown built-in model {path!r}; use builtin:tiny or builtin:toy or a directory")
    return Path(path).expanduser()
