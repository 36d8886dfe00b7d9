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


def _model_of(t):
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


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The `# ...` lines written right above (or after) each field in the class body: the schema's docs."""
    import inspect
    import re

    notes: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls is BaseModel:
            continue
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):
            continue
        pending: list[str] = []
        for line in lines:
            st = line.strip()
            if st.startswith("#"):
                pending.append(st.lstrip("# ").strip())
                continue
            m = re.match(r"^\s{4}(\w+)\s*:", line)
            if m and not st.startswith("def "):
                trailing = line.split("#", 1)[1].strip() if "#" in line and "'#" not in line and '"#' not in line else ""
                text = " ".join(pending + ([trailing] if trailing else []))
                if text:
                    notes[m.group(1)] = text
            pending = [] if st else pending
    return notes


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    out = []
    notes = _field_comments(model)
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _model_of(field.annotation)
        doc = (field.description or notes.get(name, "")).replace("\n", " ").replace("|", "\\|")
        if sub is not None:
            out.append((key, sub.__name__, _default(field), (sub.__doc__ or "").strip().split("\n")[0]))
            out.extend(rows(sub, key + "."))
        else:
            out.append((key, _type_name(field.annotation), _default(field), doc))
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
            parts.append(f"| `{key}` | {typ} | {default} | {doc} |")
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
