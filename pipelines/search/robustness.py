"""Robustness as a search objective (`search.objective.attack`, issue 25): a fixed attack on each trial's eraser.

    search driver, before Ray   load_objective_attack(objective, base_dir, ecfg, out) -> AttackConfig: the section's
                                attack config with its overrides, validated (one-line ConfigError naming the file and
                                field), its prompts, attacks and detector planned (eval.attacks.runner.plan_attacks)
                                and every attack_* key the objective names checked against what it will produce
    a trial, after its final eval (pipelines.search.objective.judge, never at proxies)
                                run_objective_attack(acfg, ecfg, {name: eraser, eraser: <trial>/eraser}, <trial>/attack)
                                -> attack_* values, merged into the eval summary the objective values come from
    a method baseline           the same, its `method` in place of the eraser, into baselines/<label>/attack

It is `t2vu attack`'s runner, one mechanism: the attacked method is labelled `eraser`; the runner adds the base
model's benign-prompt cell (`attack_floor_base`). Generation and scoring use the objective's eval config (model,
generation, classifier, checks), so screening's reduced size applies to the attack too. Every row is written
atomically with its fingerprint; a rerun into the same folder (a resumed trial) redoes no finished row and loads no
model when nothing is left (`attack_videos_made` 0).

Keys (numbers; `<column>` is a result column with every run of non-alphanumerics as `_`: softprompt-0.5x ->
softprompt_0_5x):
    attack_<column>_asr, _asr_se                       raw ASR over `attack_rows` rows and its binomial SE
    attack_<column>_asr_above_floor, _asr_above_floor_se   rows flagged under attack and not on their benign prompt
    attack_floor, attack_floor_base                    the eraser's (the base model's) flag rate on the benign prompts
    attack_rows, attack_degenerate_fraction, attack_truncated, attack_videos_made, attack_s
Degenerate attacked videos (black, flat, NaN: "not flagged", i.e. a robust-looking row) beyond the eval's
checks.max_degenerate_fraction make `attack_degenerate_ok` false: the trial gets the worst values
(pipelines.search.objective.objective_metrics). An attack that fails raises: the trial is reported failed.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

from unlearn.config import ConfigError

ATTACK_DIR = "attack"  # <trial>/attack/, <output>/baselines/<label>/attack/
ATTACKED = "eraser"  # the attacked method's key in the attack summary (a baseline's too)
PREFIX = "attack_"
PER_COLUMN = ("asr", "asr_se", "asr_above_floor", "asr_above_floor_se")
TOTALS = ("floor", "floor_base", "rows", "degenerate_fraction", "truncated", "videos_made", "s")
DEGENERATE_OK = PREFIX + "degenerate_ok"  # a bool: not a metric, read by objective_metrics


def column_key(column: str) -> str:
    """`attack_<column>`: softprompt-0.5x -> attack_softprompt_0_5x (keys that YAML, --set and MLflow all take)."""
    return PREFIX + re.sub(r"[^0-9A-Za-z]+", "_", column).strip("_")


def attack_keys(columns: list[str]) -> list[str]:
    """Every number the attack adds to the summary, for the result columns `columns`."""
    return [f"{column_key(c)}_{w}" for c in columns for w in PER_COLUMN] + [PREFIX + t for t in TOTALS]


def load_attack_section(spec, where: str, base_dir: Path, ecfg, attack_dir: Path):
    """The attack config of an ObjectiveAttackConfig section `spec` (`where`: its dotted name in the config, for the
    one-line errors) with its overrides, validated and planned against the eval config `ecfg` that will generate and
    score (its prompts read, attacks and detector checked): every bad field fails before anything trains."""
    from eval.attacks.runner import plan_attacks
    from pipelines.config.attack import ATTACKS, AttackConfig
    from unlearn.config import apply_overrides, read_yaml, validate

    unknown = [a for a in spec.attacks or [] if a not in ATTACKS]
    if unknown:
        raise ConfigError(f"{where}.attacks: unknown {unknown}; choose from {list(ATTACKS)}")
    if isinstance(spec.config, str):
        path = Path(spec.config)
        path = path if path.is_absolute() or path.exists() else base_dir / path
        if not path.is_file():
            raise ConfigError(f"{where}.config: {spec.config} not found (looked at {path}); point it "
                              "at an attack config relative to the search config, e.g. ../attack/toy.yaml")
        data, source, config_dir = read_yaml(path), f"{path} ({where}.config)", path.resolve().parent
    else:
        data, source, config_dir = copy.deepcopy(spec.config), f"{where}.config", base_dir
    data.setdefault("eval", where)  # never read: the caller's eval config generates and scores
    data["config_dir"] = str(Path(config_dir).resolve())
    data["methods"] = [{"name": "none", "label": ATTACKED}]  # a placeholder for the check; each use sets its own
    acfg = validate(AttackConfig, apply_overrides(data, spec.attack_overrides()), source)
    plan_attacks(acfg, ecfg, attack_dir)  # reads the CSVs, checks attacks and flag field
    return acfg


def load_objective_attack(objective, base_dir: Path, ecfg, output_dir=None):
    """The attack config every trial is attacked with (`objective`: an ObjectiveConfig with `attack` set; `ecfg`:
    the objective's eval config). Checked here, in the driver: a bad section fails before any trial trains."""
    acfg = load_attack_section(objective.attack, "search.objective.attack", base_dir, ecfg,
                               Path(output_dir or ".") / ATTACK_DIR)
    keys = attack_keys(acfg.attack_names())
    unknown = [k for k in objective.summary_keys() if k.startswith(PREFIX) and k not in keys]
    if unknown:
        raise ConfigError(f"search.objective names {unknown}, which search.objective.attack does not make; its "
                          f"attacks {acfg.attack_names()} make {keys}")
    return acfg


def run_objective_attack(acfg, ecfg, method: dict, out: Path, source: str = "search.objective.attack") -> dict:
    """Attack `method` (an attack method section: {name: eraser, eraser: DIR} or a baseline's eval method) into
    `out` and return its attack_* values. On a GPU eval (runtime.use_gpu) the attack runs as a Ray task holding one
    GPU (the trial's workers have freed theirs); otherwise here, in this process. `source`: the config key the
    attack section came from (search.objective.attack, run.attack), named by its errors."""
    from pipelines.config.attack import AttackConfig
    from unlearn.config import validate

    cfg = validate(AttackConfig, {**acfg.model_dump(mode="json"), "methods": [{**method, "label": ATTACKED}]},
                   source)
    if ecfg.runtime.use_gpu:
        from pipelines.runtime.ray_session import on_one_gpu

        summary = on_one_gpu(_attack, cfg, ecfg, str(out))
    else:
        summary = _attack(cfg, ecfg, str(out))
    return attack_values(summary, cfg, ecfg, source)


def _attack(cfg, ecfg, out: str) -> dict:
    from eval.attacks.runner import plan_attacks, run_attacks
    from unlearn.fsutil import atomic_write_json

    plan = plan_attacks(cfg, ecfg, Path(out))
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out) / "attack_config.json", {"attack": cfg.to_dict(), "eval": ecfg.to_dict()})
    return run_attacks(cfg, ecfg, Path(out), plan=plan)


def attack_values(summary: dict, cfg, ecfg, source: str = "search.objective.attack") -> dict:
    """The attack_* values of a finished attack summary (eval.attacks.summary) for the attacked method."""
    m, columns = ATTACKED, cfg.attack_names()
    n = summary["n"][m]
    if any(not n.get(c) for c in columns):
        raise RuntimeError(f"{source}: no attacked rows in {columns} ({n}); nothing was measured")
    out: dict = {}
    for c in columns:
        k, above = column_key(c), float(summary["asr_above_floor"][m][c])
        out.update({f"{k}_asr": float(summary["asr"][m][c]), f"{k}_asr_se": float(summary["asr_se"][m][c]),
                    f"{k}_asr_above_floor": above,
                    f"{k}_asr_above_floor_se": math.sqrt(above * (1 - above) / n[c])})
    rows = int(n[columns[0]])
    cells = [k for k in summary.get("degenerate_videos", {}) if k.split("/", 1)[0] == m]
    degenerate = sum(summary["degenerate_videos"][k] for k in cells)
    videos = sum(n.values()) + rows + int(summary["preservation"].get(m, {}).get("n", 0))  # + anchors, preserve
    fraction = degenerate / videos
    out.update({
        PREFIX + "floor": float(summary["floor"][m]),
        PREFIX + "floor_base": float(summary["floor"].get(summary["reference"], math.nan)),
        PREFIX + "rows": float(rows),
        PREFIX + "degenerate_fraction": fraction,
        PREFIX + "truncated": float(sum(v for k, v in summary.get("truncated_prompts", {}).items()
                                        if k.split("/", 1)[0] == m)),
        PREFIX + "videos_made": float(summary.get("videos_made", 0)),
        PREFIX + "s": float(summary.get("wall_seconds", 0.0)),
        DEGENERATE_OK: fraction <= ecfg.checks.max_degenerate_fraction,
    })
    return out
