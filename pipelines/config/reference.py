"""Generate the configuration reference (docs/config-reference.md) from the typed schema.

    python -m pipelines.config.reference > docs/config-reference.md

A test regenerates it and compares, so the reference cannot drift from the code.
"""

from __future__ import annotations

import sys
import typing
from typing import get_args, get_origin

from pydantic import BaseModel


def _type_name(t) -> str:
    origin = get_origin(t)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in get_args(t))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_name(a) for a in get_args(t))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in get_args(t))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if t is type(None):
        return "null"
    return getattr(t, "__name__", str(t))


def section_of(t) -> type[BaseModel] | None:
    """The config model a key's type holds (a section, an optional one, or a list of them), else None."""
    for a in (t, *get_args(t)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _default(field) -> str:
    if field.default_factory is not None:
        try:
            v = field.default_factory()
        except TypeError:
            return "(factory)"
        if isinstance(v, BaseModel):
            return "(section)"
        return f"`{v!r}`"
    if field.is_required():
        return "**required**"
    return f"`{field.default!r}`"


def description(field, sub: type[BaseModel] | None = None) -> str:
    """A key's one-line description: its `Field(description=...)`; a section without one falls back to the
    first line of its class docstring. The reference and `t2vu config show` both read it here."""
    text = field.description or ((sub.__doc__ or "").strip().split("\n")[0] if sub is not None else "")
    return " ".join(text.split())


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) of every key, sections first then their keys; the items of
    a list of sections are written `key[].field`."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = section_of(field.annotation)
        if sub is not None:
            listed = get_origin(field.annotation) is list
            out.append((key, f"list[{sub.__name__}]" if listed else sub.__name__, _default(field),
                        description(field, sub)))
            out.extend(rows(sub, key + ("[]." if listed else ".")))
        else:
            out.append((key, _type_name(field.annotation), _default(field), description(field)))
    return out


def render() -> str:
    from eval.config import EvalConfig
    from pipelines.config.attack import AttackConfig
    from pipelines.config.pipeline import PipelineConfig

    parts = ["# Configuration reference", "",
             "Generated from the typed schema by `python -m pipelines.config.reference`; "
             "`tests/test_config_reference.py` fails if this file is stale. Unknown keys are errors.", ""]
    for title, model in (("Pipeline / training config (`t2vu train`, `t2vu tune`, `t2vu run`)", PipelineConfig),
                         ("Evaluation config (`t2vu eval`, and the `eval:` section)", EvalConfig),
                         ("Attack benchmark config (`t2vu attack`)", AttackConfig)):
        parts += [f"## {title}", "", "| key | type | default | notes |", "|---|---|---|---|"]
        for key, typ, default, doc in rows(model):
            if key == "eval" and model is PipelineConfig:
                typ = "EvalConfig (below)"
            parts.append(f"| `{key}` | {typ} | {default} | {doc.replace('|', chr(92) + '|')} |")
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
