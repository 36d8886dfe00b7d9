"""A fingerprint of the backbone an eraser was trained on, so it is not applied to another model.

An eraser is a residual on the hidden states of one particular set of weights: applied to another
model of the same family and shape (a different seed, another fine-tune, a different download)
it loads, attaches and produces numbers that mean nothing. The shape checks of `unlearn.eraser`
cannot see that; this fingerprint can.

What is stored (`EraserMeta.base_fingerprint`, JSON):

    version   FINGERPRINT_VERSION
    digest    sha256 of the two parts below (16 hex digits), to name the model in messages
    config    each denoiser part's config (transformer/, and transformer_2/ of a two-expert Wan), keys
              starting with "_" left out (paths, library versions)
    samples   {"<part>/<tensor name>": {"dtype": ..., "v": [first EDGE and last EDGE values]}} for every
              k-th tensor of each part's state_dict in sorted name order (at most MAX_TENSORS per part)
    note      why there are no samples, when there are none (a meta-device model: config only)
    source    "training" or what asserted it (an import's --model)

Cost: the state_dict's names and 2 x EDGE values of at most MAX_TENSORS tensors per part: milliseconds at
5B parameters, the same from a loaded module (`of_module`) or from the model directory's safetensors
files (`of_model_dir`, read lazily: the first and last rows of the sampled tensors only), so a mismatch
is refused while planning, before any model loads.

Comparing (`compare`): the config keys both sides have must be equal; the sampled values are read again
from the current model by name and must be equal, exactly when both sides were sampled in the same dtype,
else within one unit in the last place of the coarser dtype (a bf16 training of an fp32 file, evaluated in
fp32). Limits: a model that differs from the eraser's base only in tensors the sample skips, or (across
dtypes) by less than the coarser dtype's precision, passes; a model whose weights are not in safetensors
files (.bin) or sit on the meta device is compared by config only, and the caller says so.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FINGERPRINT_VERSION = 1
MAX_TENSORS = 32  # sampled tensors per denoiser part
EDGE = 4  # values taken from each end of a sampled tensor (flattened)
PARTS = ("transformer", "transformer_2")  # a Wan 2.2 A14B's second expert is transformer_2/
_MANTISSA = {"float32": 23, "bfloat16": 7, "float16": 10, "float64": 52}
_ST_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


def _clean_config(cfg: dict) -> dict:
    return {k: _jsonable(v) for k, v in sorted(dict(cfg).items()) if not str(k).startswith("_")}


def digest_of(config: dict, samples: dict) -> str:
    blob = json.dumps({"config": config, "samples": samples}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _pick(names: list[str]) -> list[str]:
    names = sorted(names)
    k = max(1, math.ceil(len(names) / MAX_TENSORS))
    return names[::k]


def _edges_of_tensor(t) -> list[float]:
    import torch

    if hasattr(t, "full_tensor"):  # a sharded backbone's weight (DTensor): gathered (every rank reads the same names)
        t = t.full_tensor()
    flat = t.detach().reshape(-1)
    vals = torch.cat([flat[:EDGE], flat[-EDGE:]]) if flat.numel() else flat
    return [float(f"{x:.9g}") for x in vals.to("cpu", torch.float32).tolist()]


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# --- the current model: a loaded module ---------------------------------------------------------

def module_parts(transformer) -> dict[str, Any]:
    """{part: module}: the denoiser, or both experts of a two-expert Wan (`WanExperts`)."""
    experts = getattr(transformer, "experts", None)
    if experts is not None and len(experts) == 2 and hasattr(transformer, "high"):
        return {"transformer": experts[0], "transformer_2": experts[1]}
    return {"transformer": transformer}


@dataclass
class Current:
    """What is known of the model the eraser is about to meet: configs, and a way to read tensors."""

    where: str  # the model's name in messages (a path, or "the loaded transformer")
    config: dict  # {part: config}
    states: dict | None = None  # {part: state_dict} of a loaded module
    model_dir: Path | None = None  # or a model directory read lazily
    note: str = ""  # why values cannot be read (config-only comparison)

    def read(self, names: list[str]) -> tuple[dict | None, str]:
        """{name: {"dtype", "v"}} for the given "<part>/<tensor>" names; None and why when values cannot be read."""
        if self.note:
            return None, self.note
        if self.states is not None:
            return _read_states(self.states, names)
        try:
            return _read_dir(self.model_dir, names)
        except Exception as exc:  # noqa: BLE001 - a damaged weights file: the model load will say so itself
            return None, f"cannot read the weights in {self.model_dir} ({type(exc).__name__}): config compared only"


def _read_states(states: dict, names: list[str]) -> tuple[dict | None, str]:
    out: dict = {}
    for full in names:
        part, _, name = full.partition("/")
        t = states.get(part, {}).get(name)
        if t is None:
            out[full] = None
            continue
        if t.is_meta or (t.numel() == 0):
            return None, "the model's weights are on the meta device (or partitioned): config compared only"
        out[full] = {"dtype": _dtype_name(t.dtype), "v": _edges_of_tensor(t)}
    return out, ""


def of_module(transformer, source: str = "training") -> dict:
    """The fingerprint of a loaded denoiser (config only, with a note, when its weights are on the meta device)."""
    parts = module_parts(transformer)
    config = {p: _clean_config(getattr(m, "config", {}) or {}) for p, m in parts.items()}
    states = {p: m.state_dict() for p, m in parts.items()}
    names = [f"{p}/{n}" for p, sd in states.items() for n in _pick(list(sd))]
    samples, note = _read_states(states, names)
    return _assemble(config, samples, note, source)


def current_of_module(transformer, where: str = "the loaded transformer") -> Current:
    parts = module_parts(transformer)
    return Current(where, {p: _clean_config(getattr(m, "config", {}) or {}) for p, m in parts.items()},
                   states={p: m.state_dict() for p, m in parts.items()})


# --- the current model: a model directory (nothing loaded) -------------------------------------

def _dir_parts(model_dir: Path) -> list[str]:
    """transformer/, and transformer_2/ when model_index.json names it (a two-expert Wan: what loads)."""
    try:
        index = json.loads((model_dir / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}
    second = index.get("transformer_2") if isinstance(index, dict) else None
    parts = ["transformer"] + (["transformer_2"] if isinstance(second, list) and any(second) else [])
    return [p for p in parts if (model_dir / p / "config.json").is_file()]


def _weight_files(sub: Path) -> dict[str, Path] | None:
    """{tensor name: safetensors file} of one part's folder; None when its weights are not safetensors."""
    from safetensors import safe_open

    index = sub / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map") or {}
        return {name: sub / f for name, f in weight_map.items()}
    files = [sub / "diffusion_pytorch_model.safetensors"]
    if not files[0].is_file():
        files = sorted(sub.glob("*.safetensors"))
        if len(files) != 1:
            return None
    out: dict[str, Path] = {}
    with safe_open(str(files[0]), framework="pt") as f:
        for name in f.keys():
            out[name] = files[0]
    return out


def _read_dir(model_dir: Path, names: list[str]) -> tuple[dict | None, str]:
    from safetensors import safe_open

    maps: dict[str, dict | None] = {}
    by_file: dict[Path, list[tuple[str, str]]] = {}
    out: dict = {}
    for full in names:
        part, _, name = full.partition("/")
        if part not in maps:
            maps[part] = _weight_files(model_dir / part) if (model_dir / part).is_dir() else {}
        if maps[part] is None:
            return None, f"{model_dir / part} holds no safetensors weights: config compared only"
        f = maps[part].get(name)
        if f is None:
            out[full] = None
        else:
            by_file.setdefault(f, []).append((full, name))
    for path, items in by_file.items():
        with safe_open(str(path), framework="pt") as f:
            for full, name in items:
                sl = f.get_slice(name)
                out[full] = {"dtype": _ST_DTYPES.get(sl.get_dtype(), sl.get_dtype().lower()), "v": _edges_of_slice(f, sl, name)}
    return out, ""


def _edges_of_slice(f, sl, name: str) -> list[float]:
    """`_edges_of_tensor` of a tensor in a safetensors file, reading only its first and last rows."""
    import torch

    shape = list(sl.get_shape())
    total = math.prod(shape) if shape else 1
    if total <= 4096:  # small: read it whole
        return _edges_of_tensor(f.get_tensor(name))
    n = math.ceil(EDGE / math.prod(shape[1:]))  # rows holding EDGE values (1-D: EDGE rows of one value)
    first, last = sl[:n].reshape(-1)[:EDGE], sl[shape[0] - n:].reshape(-1)[-EDGE:]
    return _edges_of_tensor(torch.cat([first, last]))


def current_of_model_dir(model_dir: str | Path) -> Current:
    model_dir = Path(model_dir)
    config = {p: _clean_config(json.loads((model_dir / p / "config.json").read_text())) for p in _dir_parts(model_dir)}
    return Current(str(model_dir), config, model_dir=model_dir)


def of_model_dir(model_dir: str | Path, source: str = "") -> dict:
    """The fingerprint of a model directory's denoiser, as `of_module` would give once it is loaded."""
    cur = current_of_model_dir(model_dir)
    names: list[str] = []
    note = ""
    for part in cur.config:
        files = _weight_files(cur.model_dir / part)
        if files is None:
            note = f"{cur.model_dir / part} holds no safetensors weights: config only"
            break
        names += [f"{part}/{n}" for n in _pick(list(files))]
    samples, note = (None, note) if note else cur.read(names)
    return _assemble(cur.config, samples, note, source or f"model directory {model_dir}")


def _assemble(config: dict, samples: dict | None, note: str, source: str) -> dict:
    samples = {k: v for k, v in (samples or {}).items() if v is not None}
    return {"version": FINGERPRINT_VERSION, "digest": digest_of(config, samples), "config": config,
            "samples": samples, "note": note, "source": source}


# --- comparing ----------------------------------------------------------------------------------

@dataclass
class Verdict:
    status: str  # match | mismatch | config-only | unknown
    detail: str  # what differs, or why it could not be checked fully
    stored_digest: str = ""
    current_digest: str = ""


def _close(a: float, b: float, da: str, db: str) -> bool:
    if da == db:
        return a == b
    bits = min(_MANTISSA.get(da, 7), _MANTISSA.get(db, 7))
    atol = 2.0**-24 if "float16" in (da, db) else 0.0
    return abs(a - b) <= 2.0**-bits * max(abs(a), abs(b)) + atol


def compare(stored: dict | None, current: Current) -> Verdict:
    """Does the current model look like the one `stored` was taken from? (see the module docstring)"""
    if not stored:
        return Verdict("unknown", "the eraser file records no fingerprint of its base model (an older file, or an "
                                  "imported eraser without --model)")
    if stored.get("version") != FINGERPRINT_VERSION:
        return Verdict("unknown", f"the eraser's base fingerprint has version {stored.get('version')}, this build "
                                  f"reads {FINGERPRINT_VERSION}", stored.get("digest", ""))
    sd = stored.get("digest", "")
    for part, cfg in (stored.get("config") or {}).items():
        have = current.config.get(part)
        if have is None:
            return Verdict("mismatch", f"the eraser's base has a {part}/, this model has none", sd)
        for k in sorted(set(cfg) & set(have)):
            if cfg[k] != have[k]:
                return Verdict("mismatch", f"{part} config {k}: {cfg[k]!r} there, {have[k]!r} here", sd)
    samples = stored.get("samples") or {}
    if not samples:
        return Verdict("config-only", stored.get("note") or "the eraser's base was fingerprinted by config only", sd)
    now, why = current.read(sorted(samples))
    if now is None:
        return Verdict("config-only", why, sd)
    cur_digest = digest_of({p: current.config.get(p, {}) for p in stored.get("config") or {}},
                           {k: v for k, v in now.items() if v is not None})
    missing = [k for k, v in now.items() if v is None]
    if missing:
        return Verdict("config-only", f"this model has no tensor {missing[0]} (named differently): weights not "
                                      "compared", sd, cur_digest)
    for name in sorted(samples):
        a, b = samples[name], now[name]
        if len(a["v"]) != len(b["v"]) or not all(_close(x, y, a["dtype"], b["dtype"]) for x, y in zip(a["v"], b["v"])):
            return Verdict("mismatch", f"tensor {name} differs", sd, cur_digest)
    return Verdict("match", "", sd, cur_digest)
