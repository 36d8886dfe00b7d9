"""Named plugins: how a name in a config becomes code, and the only way it does.

A config may name a plugin (`eval.classifier.name: toy`), never a Python object: a name is looked
up in the project's own table of built-ins, then among the entry points that installed packages
declare in the plugin's group. A `module:attribute` string is not a name and is never imported
(it used to be, so `classifier.name: os:system` ran a shell command).

Registering a plugin of your own takes one entry in YOUR package's `pyproject.toml`, then an
install of that package (`pip install -e .`) into the environment that runs `t2vu`:

    [project.entry-points."t2vu.classifiers"]
    mean_colour = "my_package.plugins:MeanColour"

after which a config says `classifier.name: mean_colour` (docs/plugins.md). Installing a package
is a decision to trust its code; a config file alone cannot make the tool import anything.

Code can also register in-process (`eval.classifiers.register_classifier`), which a caller that
already runs Python may do; it is not reachable from a config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from unlearn.errors import ConfigError

#: The project's own packages: a built-in reference outside them is a programming error.
PROJECT_PACKAGES = ("unlearn", "eval", "pipelines", "toyworld")


class UnknownPluginError(ConfigError):
    """A config named a plugin that is neither built in nor registered (message: field, name, choices)."""


def load_reference(ref: str) -> Any:
    """The object a *built-in* "module:attribute" reference names (a constant in this project's code,
    never a string from a config): refused unless the module is one of the project's packages."""
    import importlib

    module, sep, attr = ref.partition(":")
    if not sep or not attr or module.split(".")[0] not in PROJECT_PACKAGES:
        raise ValueError(f"built-in plugin reference {ref!r} must be 'module:attribute' inside {PROJECT_PACKAGES}")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class PluginKind:
    """One kind of plugin: the config field that names it, its entry-point group and its built-ins.

    `builtins`: name -> "module:attribute" inside the project (loaded lazily: naming a plugin
    imports nothing heavy until it is used). `registered`: factories registered in-process by code.
    """

    field: str  # e.g. "classifier.name" (what error messages name)
    group: str  # e.g. "t2vu.classifiers" (the entry-point group installed packages declare)
    builtins: Mapping[str, str]
    noun: str = "plugin"  # what one is called in messages, e.g. "classifier"
    registered: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def __post_init__(self):
        for ref in self.builtins.values():  # fail at import, not when a user first names it
            if ref.partition(":")[0].split(".")[0] not in PROJECT_PACKAGES:
                raise ValueError(f"{self.group}: built-in {ref!r} is outside the project's packages")

    def entry_points(self) -> dict:
        """Installed packages' entry points of this group, by name (the first one found wins)."""
        from importlib.metadata import entry_points

        out: dict = {}
        for ep in entry_points(group=self.group):
            out.setdefault(ep.name, ep)
        return out

    def choices(self) -> list[str]:
        return sorted(set(self.builtins) | set(self.registered) | set(self.entry_points()))

    def check(self, name: str) -> str:
        """`name` if it names a plugin of this kind, else UnknownPluginError (one line: field, name, choices)."""
        if not isinstance(name, str) or not name:
            raise UnknownPluginError(f"{self.field} must be a {self.noun} name; registered: {', '.join(self.choices())}")
        if name in self.registered or name in self.builtins or name in self.entry_points():
            return name
        hint = ("a module:attribute path is never imported; " if ":" in name else "") + (
            f"a plugin of your own registers under the entry-point group {self.group!r} in its package's "
            "pyproject.toml, see docs/plugins.md")
        raise UnknownPluginError(f"{self.field}: {name!r} is not a registered {self.noun}; registered: "
                                 f"{', '.join(self.choices())} ({hint})")

    def load(self, name: str) -> Any:
        """The factory `name` stands for (checked first: nothing is imported for an unknown name)."""
        self.check(name)
        if name in self.registered:
            return self.registered[name]
        if name in self.builtins:
            obj = load_reference(self.builtins[name])
            # a built-in module may register itself on import (eval.classifiers' decorator)
            return self.registered.get(name, obj)
        return self.entry_points()[name].load()

    def register(self, name: str, factory: Callable[..., Any]) -> None:
        if not name or ":" in name:
            raise ValueError(f"{self.group}: a plugin name is a plain word, not {name!r}")
        self.registered[name] = factory
