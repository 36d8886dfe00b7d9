"""The search-space DSL: YAML mappings -> Ray Tune domains, in ONE place.

    space:
      loss.w_unlearn:      {loguniform: [0.1, 10.0]}   # log-uniform float in [lo, hi]
      loss.eta:            {uniform: [1.0, 7.0]}       # uniform float in [lo, hi]
      loss.mask_threshold: {quniform: [0.05, 0.3, 0.05]}  # uniform, rounded to multiples of q
      train.steps:         {int: [20, 60]}             # integer in [lo, hi], both inclusive
      eraser.rank:         {choice: [4, 8, 16]}        # one of the listed scalars

Keys are dotted paths into the method sections (model, eraser, concept, loss, train, gate, bank): e.g.
bank.rounds or gate.strength (the trial's eraser then takes the `bank:` rounds / `gate:` probe after its
training, pipelines.train.post_training); a gate.*/bank.* key needs that section in the base config.
`check_space` validates every bound/choice against the typed schema when the config
is loaded (a bad value fails in milliseconds, not after a model loaded);
`apply_sample` re-validates each sampled config inside the trial.
"""

from __future__ import annotations

from typing import Any

from unlearn.config import ConfigError

KINDS = ("loguniform", "uniform", "quniform", "int", "choice")
SECTIONS = ("model", "eraser", "concept", "loss", "train", "gate", "bank")
_SCALARS = (bool, int, float, str, type(None))


def check_param(key: str, spec: Any) -> None:
    """Shape checks of one DSL entry (no schema knowledge needed)."""
    where = f"search.space.{key}"
    if key.split(".")[0] not in SECTIONS or "." not in key:
        raise ValueError(f"{where}: keys are dotted paths into {list(SECTIONS)}, e.g. loss.w_unlearn")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(f"{where}: expected one mapping like {{loguniform: [lo, hi]}}; kinds: {list(KINDS)}")
    (kind, args), = spec.items()
    if kind not in KINDS:
        raise ValueError(f"{where}: unknown kind {kind!r}; use one of {list(KINDS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ValueError(f"{where}: choice needs a non-empty list")
        bad = [a for a in args if not isinstance(a, _SCALARS)]
        if bad:
            raise ValueError(f"{where}: choice values must be scalars (Optuna's categorical), got {bad[0]!r}")
        return
    n = 3 if kind == "quniform" else 2
    if not isinstance(args, list) or len(args) != n or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        shape = "[lo, hi, q]" if kind == "quniform" else "[lo, hi]"
        raise ValueError(f"{where}: {kind} needs {shape} numbers, got {args!r}")
    lo, hi = args[0], args[1]
    if kind == "int" and not all(isinstance(a, int) for a in (lo, hi)):
        raise ValueError(f"{where}: int bounds must be integers, got {args!r}")
    if not lo < hi:
        raise ValueError(f"{where}: lower bound {lo} must be below upper bound {hi}")
    if kind == "loguniform" and lo <= 0:
        raise ValueError(f"{where}: loguniform needs lo > 0, got {lo}")
    if kind == "quniform" and args[2] <= 0:
        raise ValueError(f"{where}: quniform step q must be > 0")


def to_tune(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """DSL -> `ray.tune` domains (flat dotted keys, which are also the MLflow param names)."""
    from ray import tune

    out = {}
    for key, spec in space.items():
        check_param(key, spec)
        (kind, args), = spec.items()
        if kind == "loguniform":
            out[key] = tune.loguniform(float(args[0]), float(args[1]))
        elif kind == "uniform":
            out[key] = tune.uniform(float(args[0]), float(args[1]))
        elif kind == "quniform":
            out[key] = tune.quniform(float(args[0]), float(args[1]), float(args[2]))
        elif kind == "int":
            out[key] = tune.randint(int(args[0]), int(args[1]) + 1)  # randint's upper bound is exclusive
        else:
            out[key] = tune.choice(list(args))
    return out


def extremes(spec: dict[str, Any]) -> list[Any]:
    (kind, args), = spec.items()
    if kind == "choice":
        return list(args)
    if kind == "int":
        return [int(args[0]), int(args[1])]
    return [float(args[0]), float(args[1])]


def check_space(cfg, space: dict[str, dict[str, Any]] | None = None) -> None:
    """Validate every bound and choice of the space against the full schema.

    Each value is set alone on the base config; a value the schema rejects
    (e.g. eraser.rank: {choice: [0, 8]}) raises ConfigError naming it.
    """
    space = space if space is not None else cfg.search.space
    for key, spec in space.items():
        for value in extremes(spec):
            try:
                cfg.with_overrides({key: value}, source=f"search.space.{key}={value!r}")
            except ConfigError as exc:
                raise ConfigError(f"search.space.{key}: value {value!r} is not a valid config value: {' '.join(str(exc).split())}") from None


def apply_sample(cfg, sample: dict[str, Any], trial: str = "trial"):
    """Base config + one sampled point -> a validated PipelineConfig (before any model loads)."""
    keys = set(cfg.search.space) if cfg.search else set()
    params = plain_params({k: v for k, v in sample.items() if k in keys})
    return cfg.with_overrides(params, source=f"<{trial} sample {params}>")


def plain_params(d: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars from samplers -> Python scalars (YAML/JSON/pydantic friendly)."""
    return {k: v.item() if hasattr(v, "item") and not isinstance(v, (list, dict, str)) else v for k, v in d.items()}
