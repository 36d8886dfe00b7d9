"""`t2vu config show`: a resolved config (after `--set`), key by key, with each key's description.

The descriptions are the schema's own (`Field(description=...)`, read by `pipelines.config.reference.description`,
the same text docs/config-reference.md shows). The human form is YAML with the descriptions as comments, so
what it prints can be saved and used as a config; `--json` gives the same keys for machines.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from pydantic import BaseModel

from pipelines.config.reference import section_of, description

KINDS = ("pipeline", "eval", "attack")
# Top-level sections that only an eval config / an attack config has (how `--kind auto` tells them apart).
EVAL_ONLY = {"generation", "classifier", "checks", "runtime", "metrics", "output", "method"}
ATTACK_ONLY = {"attacks", "methods", "softprompt", "ringabell", "detector"}
COMMENT_COLUMN = 44  # where the descriptions start in the human form (longer lines push theirs right)
SUMMARY_CHARS = 110  # the human form's description: its first sentence, cut here


def guess_kind(data: dict) -> str:
    """pipeline, eval or attack, from the file's top-level keys (a pipeline config's `eval:` is a section)."""
    if ATTACK_ONLY & set(data):
        return "attack"
    if EVAL_ONLY & set(data) and not {"train", "concept", "search", "distributed"} & set(data):
        return "eval"
    return "pipeline"


def load(path: str | Path, overrides: list[str] | None, kind: str = "auto") -> tuple[str, BaseModel]:
    """The validated config of `kind` with `--set` items applied by that kind's own loader (ConfigError if bad)."""
    from unlearn.config import read_yaml

    if kind == "auto":
        kind = guess_kind(read_yaml(path))
    if kind == "attack":
        from pipelines.config.attack import load_attack_config as loader
    elif kind == "eval":
        from eval.config import load_eval_config as loader
    else:
        from pipelines.config.pipeline import load_pipeline_config as loader
    return kind, loader(path, overrides)


def entries(cfg: BaseModel, prefix: str = "", depth: int = 0) -> list[dict]:
    """One entry per key, in schema order: key, depth, value (JSON-ready; None for a section that is set),
    description, and whether it is a section (its keys follow it)."""
    out = []
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            out.append({"key": key, "depth": depth, "section": True, "value": None,
                        "description": description(field, section_of(field.annotation))})
            out.extend(entries(value, key + ".", depth + 1))
            continue
        dumped = type(cfg).__pydantic_serializer__.to_python(cfg, mode="json", include={name})[name]
        out.append({"key": key, "depth": depth, "section": False, "value": dumped,
                    "description": description(field, section_of(field.annotation))})
    return out


def summary(text: str) -> str:
    """The first sentence of a description, at most SUMMARY_CHARS long (the full text: --json, the reference)."""
    first = re.split(r"(?<=\.)\s+(?=[A-Z`(])", text, maxsplit=1)[0]
    return first if len(first) <= SUMMARY_CHARS else first[: SUMMARY_CHARS - 3].rstrip() + "..."


def flow(value) -> str:
    """A value as one line of YAML (flow style), as it would be written in a config."""
    return yaml.safe_dump([value], default_flow_style=True, width=10**9, allow_unicode=True).strip()[1:-1]


def render_text(path: str | Path, kind: str, cfg: BaseModel, overrides: list[str]) -> str:
    sets = "".join(f" --set {o}" for o in overrides)
    lines = [f"# {path}: resolved {kind} config{sets}", "# every key, its value and what it does "
             "(full descriptions: --json, docs/config-reference.md)"]
    for e in entries(cfg):
        name = e["key"].rsplit(".", 1)[-1]
        text = "  " * e["depth"] + (f"{name}:" if e["section"] else f"{name}: {flow(e['value'])}")
        lines.append(f"{text.ljust(COMMENT_COLUMN)}  # {summary(e['description'])}" if e["description"] else text)
    return "\n".join(lines) + "\n"


def render_json(path: str | Path, kind: str, cfg: BaseModel, overrides: list[str]) -> str:
    keys = [{k: e[k] for k in ("key", "value", "description", "section")} for e in entries(cfg)]
    return json.dumps({"config": str(path), "kind": kind, "overrides": list(overrides),
                       "resolved": cfg.model_dump(mode="json"), "keys": keys}, indent=2) + "\n"
