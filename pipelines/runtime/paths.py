"""Where the project's files that are not Python packages live: `configs/` (the DeepSpeed JSON files, the
toy recipes and eval configs the code reads by itself), `benchmarks/` and `examples/`.

The packages (`unlearn`, `pipelines`, `eval`, `toyworld`, with `unlearn/assets`) are installed with
`pip install .`; those folders are not package data. `project_root()` finds them:
  1. `$T2VU_HOME`: set explicitly. The cluster image sets it to its WORKDIR (/home/ray/t2v-unlearn),
     which holds configs/, benchmarks/ and examples/ and no package sources (Dockerfile).
  2. The checkout the code runs from: the folder above `pipelines/`, when it has configs/ and
     pyproject.toml (a clone, `pip install -e .`, or a `t2vu submit` working_dir).
  3. The current directory, when it has configs/ (a Ray job's working_dir).
Else `configs/...` paths name the checkout's place and fail with "not found" naming them.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "T2VU_HOME"


def project_root() -> Path:
    """The folder holding configs/, benchmarks/ and examples/ (see the module docstring)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "configs").is_dir() and (checkout / "pyproject.toml").is_file():
        return checkout
    cwd = Path.cwd()
    if (cwd / "configs").is_dir():
        return cwd
    return checkout


def config_path(*parts: str) -> Path:
    """A file under the project's configs/ folder, e.g. config_path("deepspeed", "zero2.json")."""
    return project_root() / "configs" / Path(*parts)
