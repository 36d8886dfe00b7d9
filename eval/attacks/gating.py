"""An attack config method's `gate:` (issue 25): the content gate put on an eraser, then attacked through it.

`t2vu attack` with `methods: [{name: eraser, eraser: DIR, gate: configs/gates/toy.yaml}]` trains the gate's probe
on the base model (the attack pipeline, no method attached: `unlearn.gate_training.build_gate`), writes
DIR + gate to <output>/gates/<label>/eraser and attacks that file like any eraser: the gate hooks the
transformer every white-box attack calls, so the attack optimises through it (adaptive). A gate that differs
from one already trained in <output>/gates only in inference settings (strength, threshold, sharpness,
min_gate, correction) reuses its probe: choosing those costs generation, not retraining (~50 s on the toy).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from unlearn.config import ConfigError, read_yaml, validate
from unlearn.gate_config import PROBE_FIELDS, GateConfig

GATES_DIR = "gates"
REUSE_FIELDS = (*PROBE_FIELDS, "concept_prompt", "toward_prompts")  # what the trained tensors depend on


def gate_of(cfg, method) -> GateConfig | None:
    """The method's gate section (read from its YAML file when a path); ConfigError naming file and field."""
    g = method.gate
    if isinstance(g, str):
        path = cfg.resolve_path(g)
        if not path.is_file():
            raise ConfigError(f"methods[{method.key}].gate: {g} not found (looked at {path}); point it at a file with "
                              "a `gate:` section, e.g. configs/gates/toy.yaml")
        section = (read_yaml(path) or {}).get("gate")
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: no `gate:` section (methods[{method.key}].gate points here)")
        g = validate(GateConfig, section, f"{path} (gate:)")
        if g.missing():
            raise ConfigError(f"{path}: gate.{g.missing()[0]} must be listed: an attack config has no concept "
                              "section to default to")
    return None if g is None or g.name == "none" else g


def gated_dir(out: Path, key: str) -> Path:
    return Path(out) / GATES_DIR / key / "eraser"


def gate_id(gcfg: GateConfig) -> str:
    from eval.writer import digest

    return digest(gcfg.model_dump(mode="json"), 12)


def ensure_gated(ctx, eraser_dir: Path, gcfg: GateConfig, target: Path, log) -> dict:
    """Write eraser_dir + the gate to `target` unless it is there already; returns the gate's training record.
    Call with no method attached to ctx's pipeline (the probe learns from the base model)."""
    from unlearn.eraser import read_eraser, save_eraser
    from unlearn.fsutil import file_sha256
    from unlearn.gate_training import build_gate, put_gate, with_settings

    want = gcfg.model_dump(mode="json")
    sha = file_sha256(Path(eraser_dir) / "eraser.safetensors")
    if (target / "eraser_config.json").is_file():
        rec = read_eraser(target).meta.extra.get("gate_training", {})
        if rec.get("config") == want and rec.get("eraser_sha256") == sha:
            return rec
    t0 = time.perf_counter()
    gate, record = None, None
    for other in sorted(target.parents[1].glob("*/eraser/eraser_config.json")):  # a probe trained already
        es = read_eraser(other.parent)
        rec = es.meta.extra.get("gate_training", {})
        if es.gate is not None and all(rec.get("config", {}).get(k) == want[k] for k in REUSE_FIELDS):
            gate, record = with_settings(es.gate, gcfg), {**rec, "reused_from": str(other.parent)}
            break
    if gate is None:
        print(f"  training the content gate's probe for {target.parent.name}", file=log, flush=True)
        gate, record = build_gate(gcfg, ctx.spec, ctx.encode, ctx.latent_shape(), contextlib.nullcontext)
        record["seconds"] = round(time.perf_counter() - t0, 1)
    record.update(config=want, eraser_sha256=sha, eraser=str(eraser_dir))
    es = read_eraser(eraser_dir)
    put_gate(es, gate, record)
    save_eraser(es, target)
    return record
