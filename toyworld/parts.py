"""Which component module builds the toy model of a family: `parts_of("cogvideox" | "wan")`.

Each module (`toyworld.components` for CogVideoX, `toyworld.components_wan` for Wan) has the
same members: FAMILY, PIPELINE_CLASS, GENERATION, TEXT_LEN, BUILD_DEFAULTS (BuildConfig
fields that differ for the family), make_text_side, make_vae, make_transformer,
make_scheduler, make_pipeline, load_pipeline, decode_for_training, latent_stats (VAE latents -> the
transformer's training latents + the VAE config that undoes them) and noised (x_t, timestep
and target of a training batch). Training, quality and build take the family and never
name a class.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

PARTS = {"cogvideox": "toyworld.components", "wan": "toyworld.components_wan"}


def toy_families() -> list[str]:
    return list(PARTS)


def parts_of(family: str):
    """The component module of `family` (one-line error naming the known ones)."""
    if family not in PARTS:
        raise ValueError(f"no toy model for family {family!r}; toy families: {', '.join(PARTS)}")
    return importlib.import_module(PARTS[family])


def family_of_dir(model_dir: str | os.PathLike) -> str:
    """The toy family of a saved model directory, from model_index.json's pipeline class."""
    index = Path(model_dir) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index} missing: {model_dir} is not a toy model directory (t2vu toy build DIR)")
    return _family_of_class(json.loads(index.read_text()).get("_class_name"), str(index))


def family_of_pipeline(pipe) -> str:
    """The toy family of a loaded pipeline (its class: CogVideoXPipeline or WanPipeline)."""
    return _family_of_class(type(pipe).__name__, "pipeline")


def _family_of_class(cls_name: str | None, where: str) -> str:
    for family in PARTS:
        if parts_of(family).PIPELINE_CLASS == cls_name:
            return family
    raise ValueError(f"{where}: pipeline class {cls_name!r} has no toy family ({', '.join(PARTS)})")
