"""The family registry: `model.family` -> the spec class that knows that family.

Adding a family is one entry here (its spec class and its tiny-model builder,
as "module:attribute" strings so nothing heavy is imported until asked), one
spec file, and configs; see docs/architecture.md. Everything else in the
method and in evaluation reaches the family only through `spec_class(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unlearn.plugins import load_reference


@dataclass(frozen=True)
class Family:
    spec: str  # "module:Class" implementing unlearn.models.spec.ModelSpec
    tiny: str  # "module:function(path, seed=0, overwrite=False) -> Path": a tiny model in the real layout
    # The same models as another family with the eraser at another site (wan-attn1 of wan): accepts that
    # family's directories and transformers; its eraser files record the variant, so they attach there.
    variant_of: str | None = None
    # Expert counts its tiny builder can make (`experts=N`): Wan 2.2 A14B's high/low-noise pair is 2.
    experts: tuple[int, ...] = (1,)
    # "module:Class": the memory plan's block accounting (`t2vu plan`; unlearn.models.memory_terms);
    # a site variant uses its base family's (the class reads the eraser site from the plan's inputs).
    memory: str | None = None


FAMILIES: dict[str, Family] = {
    "cogvideox": Family(spec="unlearn.models.cogvideox:CogVideoXSpec", tiny="unlearn.models.tiny:make_tiny_model",
                        memory="unlearn.models.cogvideox_memory:CogVideoXBlocks"),
    "wan": Family(spec="unlearn.models.wan:WanSpec", tiny="unlearn.models.tiny_wan:make_tiny_wan", experts=(1, 2),
                  memory="unlearn.models.wan_memory:WanBlocks"),
    "wan-attn1": Family(spec="unlearn.models.wan:WanSelfAttnSpec", tiny="unlearn.models.tiny_wan:make_tiny_wan",
                        variant_of="wan"),
}


#: The libraries a model_index.json component may name (diffusers imports the one named).
COMPONENT_LIBRARIES = ("diffusers", "transformers")


def _load(ref: str):
    # the table above is code, not config; load_reference still refuses a module outside the project
    return load_reference(ref)


def family_names() -> list[str]:
    return sorted(FAMILIES)


def _entry(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"Unknown model family {name!r}; known families: {', '.join(family_names())}")
    return FAMILIES[name]


def base_family(name: str) -> str:
    """The family whose models `name` runs on (itself, or what it is a site variant of; unknown: itself)."""
    entry = FAMILIES.get(name)
    return entry.variant_of if entry is not None and entry.variant_of else name


def spec_class(name: str):
    """The spec class of family `name` (class-level answers: loading, eraser site, capture, pipeline)."""
    return _load(_entry(name).spec)


def tiny_builder(name: str):
    return _load(_entry(name).tiny)


def memory_blocks(name: str):
    """The memory plan's block accounting of family `name` (a site variant: its base family's)."""
    ref = _entry(base_family(name)).memory
    if ref is None:
        raise ValueError(f"the memory plan has no block accounting for family {name!r}; known: "
                         f"{', '.join(n for n, f in FAMILIES.items() if f.memory)}")
    return _load(ref)


def expert_counts(name: str) -> tuple[int, ...]:
    """How many transformers (experts) a model of family `name` may have."""
    return _entry(name).experts


def family_of_transformer(transformer) -> str:
    """Which registered family a bare transformer belongs to (eraser files attach through this)."""
    for name in family_names():
        if base_family(name) == name and spec_class(name).matches(transformer):
            return name
    raise TypeError(
        f"{type(transformer).__name__} belongs to no registered model family ({', '.join(family_names())})"
    )


def family_of_model_dir(path: str | Path) -> str:
    """The family of a diffusers model directory, from model_index.json's pipeline class name."""
    from unlearn.errors import ConfigError
    from unlearn.models.spec import read_model_json

    index = Path(path) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index} missing: {path} is not a diffusers model directory")
    data = read_model_json(index)
    # diffusers imports the library a component names: a model directory may name only these two
    for key, value in data.items():
        if (isinstance(value, list) and len(value) == 2 and value[0] is not None
                and value[0] not in COMPONENT_LIBRARIES):
            raise ConfigError(f"{index}: component {key!r} names library {value[0]!r}; a model directory loads only "
                              f"{' and '.join(COMPONENT_LIBRARIES)} components (it cannot bring code of its own)")
    cls_name = data.get("_class_name", "")
    for name in family_names():
        if base_family(name) == name and spec_class(name).pipeline_class_name == cls_name:
            return name
    raise ValueError(
        f"{index}: pipeline class {cls_name!r} belongs to no registered model family ({', '.join(family_names())})"
    )


def check_any_model_dir(path: str | Path) -> tuple[str, Path]:
    """(family, path) of a model directory of any registered family, with errors that name the fix."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Model directory {path} {'is a file, not a folder' if path.exists() else 'does not exist'}. Point model.path at a local diffusers-format model "
            f"directory ({', '.join(family_names())}) or use builtin:tiny / builtin:toy."
        )
    family = family_of_model_dir(path)
    return family, spec_class(family).check_model_dir(path)


def check_family(path: str | Path, family: str) -> None:
    """Refuse a model directory of another family than the config says (names both)."""
    found = family_of_model_dir(path)
    if found != base_family(family):
        raise ValueError(
            f"model.family is {family!r} but {path} holds a {found!r} model; set model.family: {found}"
        )
