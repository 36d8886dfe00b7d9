"""The classifier plugin interface of the evaluation stage.

A classifier looks at one generated video (and the CSV row that produced it)
and returns a flat record; `summarize` turns a list of records into set-level
metrics; `summarize_paired` compares base and erased records made from the
same rows and seeds. Plugins register a factory under a name that configs use
(`eval.classifier.name`), with options passed as keyword arguments.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

Record = dict[str, Any]


class VideoClassifier(ABC):
    #: registry name, e.g. "nudenet" or "toy"
    name: str = ""

    @abstractmethod
    def classify(self, frames: np.ndarray, row: dict[str, Any]) -> Record:
        """Score one video.

        frames: float32 array [F, H, W, 3], RGB in [0, 1] (what CogVideoXPipeline returns
        with output_type="np"). row: the prompt CSV row (prompt, seed, concept, ...).
        Returns a flat dict of scalars (ints, floats, bools, strings) for results.csv.
        """

    @abstractmethod
    def summarize(self, records: list[Record]) -> dict[str, float]:
        """Aggregate per-video records of one model (base or erased) into metrics."""

    def summarize_paired(self, base: list[Record], erased: list[Record]) -> dict[str, float]:
        """Metrics that need base and erased records of the same rows (same order). Optional."""
        return {}

    #: The boolean record field that says the video shows the concept (None: this classifier has none). It
    #: gives the eval's first number, `unasked_concept_rate` (eval.metrics): the concept where it was not asked for.
    concept_field: str | None = None

    def concept_asked(self, record: Record) -> bool | None:
        """Whether the row's prompt asks for the concept (from a base record); None = its prompt set
        says (target rows ask, preserve rows do not). Optional."""
        return None

    def close(self) -> None:  # release sessions/threads
        pass


_REGISTRY: dict[str, Callable[..., VideoClassifier]] = {}
# Built-in plugins are imported lazily so that importing the interface stays cheap.
_BUILTIN_MODULES = {"nudenet": "eval.classifiers.nudenet", "toy": "eval.classifiers.toy"}


def register_classifier(name: str) -> Callable:
    def deco(factory: Callable[..., VideoClassifier]):
        _REGISTRY[name] = factory
        return factory

    return deco


# Third-party classifiers are installed packages that declare an entry point in this group, e.g. in
# their pyproject.toml:   [project.entry-points."t2vu.classifiers"]   mydetector = "mypkg.det:Factory"
# A config names only a registered name: a `module:attr` string would import any module and call any
# attribute (`os:system` ran a shell command), so a config file could run code. Choosing what is
# installed is the user's trust decision; choosing a name from it is the config's.
ENTRY_POINT_GROUP = "t2vu.classifiers"


def _installed_plugins() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_classifiers() -> list[str]:
    return sorted(set(_REGISTRY) | set(_BUILTIN_MODULES) | set(_installed_plugins()))


def build_classifier(name: str, **options: Any) -> VideoClassifier:
    if name not in _REGISTRY and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name in _REGISTRY:
        return _REGISTRY[name](**options)
    plugin = _installed_plugins().get(name)
    if plugin is not None:
        return plugin.load()(**options)
    how = (f'register a plugin as an entry point of group "{ENTRY_POINT_GROUP}" in its package\'s pyproject.toml '
           f'([project.entry-points."{ENTRY_POINT_GROUP}"] NAME = "package.module:Factory") and use NAME')
    if ":" in name:
        raise ValueError(f"classifier {name!r} is a module path, not a registered classifier: configs may only "
                         f"name one of {known_classifiers()}; to add one, {how}")
    raise ValueError(f"Unknown classifier {name!r}; known: {known_classifiers()} (to add one, {how})")
