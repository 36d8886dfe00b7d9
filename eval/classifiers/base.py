"""The classifier plugin interface of the evaluation stage.

A classifier looks at one generated video (and the CSV row that produced it)
and returns a flat record; `summarize` turns a list of records into set-level
metrics; `summarize_paired` compares base and erased records made from the
same rows and seeds. Plugins register a factory under a name that configs use
(`eval.classifier.name`), with options passed as keyword arguments: built in here, or declared
by an installed package as an entry point of the group `t2vu.classifiers` (docs/plugins.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from unlearn.plugins import PluginKind

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


# Which classifiers a config may name (`eval.classifier.name`): the built-ins below, factories
# registered in-process by code, and the entry points of installed packages in the group
# `t2vu.classifiers` (docs/plugins.md). A `module:Factory` string is never imported.
CLASSIFIERS = PluginKind(
    field="classifier.name",
    group="t2vu.classifiers",
    builtins={"nudenet": "eval.classifiers.nudenet:NudeNetClassifier", "toy": "eval.classifiers.toy:ToyClassifier"},
    noun="classifier",
)
ENTRY_POINT_GROUP = CLASSIFIERS.group


def register_classifier(name: str) -> Callable:
    """Register a factory under `name` in this process (code, not config: a config can only name it)."""

    def deco(factory: Callable[..., VideoClassifier]):
        CLASSIFIERS.register(name, factory)
        return factory

    return deco


def classifier_names() -> list[str]:
    return CLASSIFIERS.choices()


known_classifiers = classifier_names


def build_classifier(name: str, **options: Any) -> VideoClassifier:
    """The classifier `name` (built-in, registered in-process, or an installed entry point) made with `options`;
    an unknown name is `unlearn.plugins.UnknownPluginError` naming the field, the name and the choices."""
    return CLASSIFIERS.load(name)(**options)
