"""Everything an eval decides before any model loads: rows, paths, resume fingerprints, worker specs.

Why a module of its own: planning is cheap and pure (config + files in, an EvalPlan out), so
benchmarks and tests can plan an eval without running one, and every config or path error
surfaces here as a one-line ConfigError before minutes of model loading.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.scoring import ScorerSpec
from eval.workers import WorkerSpec, text_cache_root
from unlearn.config import ConfigError

log = logging.getLogger(__name__)
MAX_LISTED = 10  # rows named in a note or an error (every row is in results.csv)


def resolve_eraser_dir(path: str | Path) -> Path:
    """An eraser directory, or a training output folder holding `eraser/`."""
    from unlearn.eraser import CONFIG_NAME, WEIGHTS_NAME

    p = Path(path).expanduser()
    if (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file():
        return _readable(p)
    if (p / "eraser" / CONFIG_NAME).is_file():
        return _readable(p / "eraser")
    raise ConfigError(
        f"eraser: {p} is not an eraser directory (expected {CONFIG_NAME} + {WEIGHTS_NAME}, or a training "
        "output folder with eraser/ inside); use eraser: null to evaluate the base model alone"
    )


def _readable(eraser_dir: Path) -> Path:
    """Read the eraser once here (small files), so a damaged one fails before any output exists."""
    from unlearn.eraser import EraserFileError, read_eraser

    try:
        read_eraser(eraser_dir)
    except (EraserFileError, ValueError, OSError) as exc:
        raise ConfigError(f"eraser: {exc}") from None
    return eraser_dir


ALLOW_OTHER_BASE_FIX = ("set eraser_allow_other_base: true in the eval config (--set eraser_allow_other_base=true) to "
                        "evaluate it anyway")


def check_eraser_fits(eraser_dir: Path, model_path: Path, allow_other_base: bool = False) -> list[str]:
    """An eraser for another model family or size, or for another model of the same shape (its recorded base
    fingerprint, `unlearn.base_fingerprint`), fails here, before any output or model load. Returns the
    warnings for the run's notes (no fingerprint recorded, a config-only check, an allowed other base)."""
    from unlearn.base_fingerprint import current_of_model_dir
    from unlearn.eraser import EraserBaseMismatchError, EraserMismatchError, check_base, check_fits, read_eraser
    from unlearn.models.families import family_of_model_dir, spec_class

    family = family_of_model_dir(model_path)
    meta = read_eraser(eraser_dir).meta
    try:
        check_fits(meta, family, *spec_class(family).eraser_shape_of(model_path))
    except EraserMismatchError as exc:
        raise ConfigError(f"eraser {eraser_dir} does not fit model.path {model_path}: {exc}") from None
    try:
        return check_base(meta, current_of_model_dir(model_path), eraser=str(eraser_dir),
                          allow_other_base=allow_other_base, fix=ALLOW_OTHER_BASE_FIX)
    except EraserBaseMismatchError as exc:
        raise ConfigError(str(exc)) from None


def check_scheduler(name: str, model_path: Path) -> None:
    """A sampler the model's family does not have (CogVideoX's ddim/dpm on a Wan model) fails here, before
    any output or model load, not when the pipeline is built."""
    from unlearn.models.families import family_of_model_dir, spec_class

    family = family_of_model_dir(model_path)
    allowed = spec_class(family).eval_schedulers
    if name not in allowed:
        raise ConfigError(f"generation.scheduler {name!r} is not a sampler of {family} models ({model_path}); "
                          f"set generation.scheduler to one of: {', '.join(allowed)}")


@dataclass
class EvalPlan:
    """Everything decided before any model loads."""

    cfg: Any
    output_dir: Path
    rows: list  # PromptRow
    model_path: Path
    eraser: Path | None
    fingerprint: str
    row_fingerprints: dict[str, str] = field(default_factory=dict)
    # Summary entries decided by planning (truncation, prompt sets, provenance) and the notes the
    # run reports (console warnings, summary.json `notes`, report.md).
    inputs: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    banner: str = ""  # what is evaluated, printed as the run starts (also the first note)
    method: Any = None  # eval.methods.MethodPlan: what makes the "erased" video


def plan_eval(cfg, output_dir: str | Path, prompts: str | Path | None = None, limit: int | None = None,
              eraser: str | Path | None = None) -> EvalPlan:
    """Validate config, prompt files, model and eraser paths; compute resume fingerprints."""
    from eval.methods import plan_method
    from eval.prompts import load_eval_sets
    from eval.writer import digest
    from unlearn.fsutil import file_sha256

    sets = load_eval_sets(cfg, prompts=prompts, limit=limit)
    rows = [r for ps in sets.values() for r in ps.rows]
    eraser_path = eraser if eraser is not None else cfg.resolve_path(cfg.eraser)
    eraser_dir = resolve_eraser_dir(eraser_path) if eraser_path else None
    model_path = resolve_model(cfg)
    check_scheduler(cfg.generation.scheduler, model_path)
    base_notes = check_eraser_fits(eraser_dir, model_path, cfg.eraser_allow_other_base) if eraser_dir is not None else []
    method = plan_method(cfg, eraser_dir, rows)
    clip = cfg.resolve_path(cfg.metrics.clip_model)
    if clip is not None and not (clip / "config.json").is_file():
        raise ConfigError(
            f"metrics.clip_model: {clip} is not a local CLIP model directory (no config.json). Nothing is "
            "downloaded: save a transformers CLIPModel + CLIPProcessor there, or set clip_model: null"
        )
    classifier_options = cfg.classifier.factory_options()
    # read once for the resume fingerprint and the provenance (a rank-128 5B eraser is ~130 MB in fp32)
    eraser_sha256 = file_sha256(eraser_dir / "eraser.safetensors") if eraser_dir else None
    ident = {
        "model": str(model_path),
        "dtype": cfg.model.dtype,
        "eraser": eraser_sha256[:16] if eraser_sha256 else None,
        "generation": cfg.generation.model_dump(mode="json"),
        "classifier": [cfg.classifier.name, classifier_options],
        "metrics": cfg.metrics.model_dump(mode="json"),
        "frames": [cfg.output.save_videos, cfg.output.save_gifs, cfg.output.gif_height],
        "checks": cfg.checks.frame_checks(),  # rows record their degenerate-video flags
        "method": method.fingerprint(),
    }
    inputs, notes = prompt_set_inputs(sets)
    banner = sets_banner(cfg, sets, prompts, limit)
    notes.insert(0, (False, banner))
    inputs.update(provenance(cfg, sets, model_path, eraser_dir, eraser_sha256))
    inputs["method"] = method.as_dict()
    notes += [(False, n) for n in method.notes]
    notes += [(True, n) for n in base_notes]
    rows, truncation, cut_note = count_prompt_tokens(cfg, model_path, rows)
    inputs.update(truncation)
    notes += [(True, n) for n in cut_note]
    fp = digest(ident)
    # a per-row guidance makes another video (rows without one keep the plain key)
    row_fps = {r.id: digest([fp, r.set, r.prompt, r.seed] + ([r.guidance] if r.guidance is not None else []))
               for r in rows}
    if len(row_fps) != len(rows):  # cannot happen: ids are set + index
        raise RuntimeError("duplicate row ids")
    for warn, note in notes:
        log.log(logging.WARNING if warn else logging.INFO, "%s", note)
    return EvalPlan(cfg, Path(output_dir), rows, model_path, eraser_dir, fp, row_fps, inputs, [n for _, n in notes],
                    banner, method=method)


def resolve_model(cfg) -> Path:
    """The eval config's model directory (builtin names, paths relative to the config), checked."""
    from unlearn.models.families import check_any_model_dir
    from unlearn.models.registry import resolve_model_path

    try:
        model_path = resolve_model_path(cfg.model.path)
        if not str(cfg.model.path).startswith("builtin:") and not model_path.is_absolute() and not model_path.exists():
            model_path = cfg.resolve_path(cfg.model.path)
        return check_any_model_dir(model_path)[1].resolve()
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"model.path: {exc}") from None


def sets_banner(cfg, sets: dict, prompts, limit: int | None) -> str:
    """The run's first line: which files are evaluated, how many rows of each, and what --limit did.

    A user passing `--prompts X` must see that X is evaluated alone (or with the preserve set, when
    `preserve.with_cli_prompts` asks) and that `--limit N` keeps the first N rows of each set.
    """
    from eval.prompts import PRESERVE

    parts = []
    for name, ps in sets.items():
        lim = ps.info["limit"]
        cut = f", the first {lim} kept" if lim is not None and ps.info["rows"] == lim else ""
        parts.append(f"{name} {ps.info['rows']} rows from {ps.info['path']}{cut}")
    text = "evaluating " + "; ".join(parts)
    if limit is not None:
        text += f" (--limit {limit} applies to each set)"
    if prompts is not None and cfg.preserve.path and PRESERVE not in sets:
        text += (f"; the config's preserve set ({cfg.preserve.path}) is not evaluated: --prompts names the file "
                 "to evaluate (preserve.with_cli_prompts: true adds it)")
    return text


def provenance(cfg, sets: dict, model_path: Path, eraser_dir: Path | None, eraser_sha256: str | None) -> dict[str, Any]:
    """What was evaluated, as read (summary.json and eval_config.json `provenance`): the prompt CSVs
    actually read (after `--prompts`) with their sha256, the model, the eraser and the sha256 of
    its weights, the classifier and its threshold."""
    out: dict[str, Any] = {}
    for key, name in (("prompts", "target"), ("preserve", "preserve")):
        info = sets[name].info if name in sets else {}
        out[f"{key}_path"], out[f"{key}_sha256"] = info.get("path"), info.get("sha256")
    out["model"] = str(model_path)
    out["eraser"] = str(eraser_dir) if eraser_dir else None
    out["eraser_sha256"] = eraser_sha256
    out["classifier"] = cfg.classifier.name
    out["classifier_threshold"] = cfg.classifier.factory_options().get("threshold")
    return out


PROVENANCE_KEYS = ("prompts_path", "prompts_sha256", "preserve_path", "preserve_sha256", "model", "eraser",
                   "eraser_sha256", "classifier", "classifier_threshold")


def eval_config_record(plan: EvalPlan) -> dict[str, Any]:
    """eval_config.json: the config as run (prompt paths as actually read), and its provenance."""
    config = plan.cfg.to_dict()
    for key in ("prompts", "preserve"):
        if plan.inputs.get(f"{key}_path"):
            config[key]["path"] = plan.inputs[f"{key}_path"]
    return {"fingerprint": plan.fingerprint, "config": config, "model_path": str(plan.model_path),
            "eraser": str(plan.eraser) if plan.eraser else None, "method": plan.method.as_dict(),
            "provenance": {k: plan.inputs.get(k) for k in PROVENANCE_KEYS}}


def prompt_set_inputs(sets: dict) -> tuple[dict[str, Any], list[tuple[bool, str]]]:
    """Summary entries about the prompt sets as read (eval.prompts.PromptSet), and their notes."""
    infos = {name: ps.info for name, ps in sets.items()}
    inputs: dict[str, Any] = {"prompt_sets": infos}
    for key, field_ in (("rows_duplicate", "duplicates"), ("rows_deduped", "deduped"),
                        ("rows_filtered_out", "filtered_out")):
        inputs[key] = sum(int(i[field_]) for i in infos.values())
    inputs["rows_skipped"] = sum(len(i["skipped"]) for i in infos.values())
    return inputs, [n for ps in sets.values() for n in ps.notes]


def _rows_listed(rows: list) -> str:
    """'file.csv rows 1 (250 tokens), 4 (231)' for the first MAX_LISTED rows, grouped by file."""
    by: dict[str, list[str]] = {}
    for r in rows[:MAX_LISTED]:
        by.setdefault(r.source, []).append(f"{r.index + 1} ({r.prompt_tokens}{' tokens' if not by.get(r.source) else ''})")
    return "; ".join(f"{src} rows {', '.join(items)}" for src, items in by.items())


def count_prompt_tokens(cfg, model_path: Path, rows: list) -> tuple[list, dict[str, Any], list[str]]:
    """Rows with their token counts, the summary entries about truncation, and the note for the run.

    `checks.on_truncation: error` refuses prompts over the limit here, before any generation."""
    from dataclasses import replace

    from eval.generate import prompt_token_counts

    counts, limit = prompt_token_counts(model_path, [r.prompt for r in rows], cfg.generation)
    rows = [replace(r, prompt_tokens=n, token_limit=limit) for r, n in zip(rows, counts)]
    cut = [r for r in rows if r.truncated]
    over = max((r.prompt_tokens - limit for r in cut), default=0)
    inputs = {"text_token_limit": limit, "rows_truncated": len(cut), "truncated_tokens_max": over}
    if not cut:
        return rows, inputs, []
    where = _rows_listed(cut)
    more = f" and {len(cut) - MAX_LISTED} more" if len(cut) > MAX_LISTED else ""
    if cfg.checks.on_truncation == "error":
        raise ConfigError(
            f"checks.on_truncation: error: {len(cut)} of {len(rows)} prompts are longer than the text encoder's "
            f"{limit} tokens: {where}{more}; shorten them, or set checks.on_truncation: warn to evaluate them cut"
        )
    note = (f"{len(cut)} of {len(rows)} prompts are longer than the text encoder's {limit} tokens (by up to {over} "
            f"tokens): the pipeline cuts them, so words past the limit change nothing ({where}{more}); results.csv "
            "marks them truncated, checks.on_truncation: error refuses them")
    return rows, inputs, [note]


def worker_spec(plan: EvalPlan) -> WorkerSpec:
    cfg = plan.cfg
    clip = cfg.resolve_path(cfg.metrics.clip_model)
    return WorkerSpec(
        model_path=str(plan.model_path), dtype=cfg.model.dtype, device=cfg.model.device, use_gpu=cfg.runtime.use_gpu,
        eraser=str(plan.eraser) if plan.eraser else None, generation=cfg.generation.model_dump(mode="json"),
        scorer=ScorerSpec(
            classifier=cfg.classifier.name, classifier_options=cfg.classifier.factory_options(),
            output_dir=str(plan.output_dir.resolve()), fps=cfg.generation.fps, save_videos=cfg.output.save_videos,
            save_gifs=cfg.output.save_gifs, gif_height=cfg.output.gif_height, paired_frames=cfg.metrics.paired_frames,
            clip_model=str(clip.resolve()) if clip else None, clip_frames=cfg.metrics.clip_frames,
        ),
        scorer_mode=cfg.runtime.scorer, scorer_nice=cfg.runtime.scorer_nice, torch_threads=cfg.runtime.torch_threads,
        base_cache_dir=str(cfg.resolve_path(cfg.runtime.base_cache_dir).resolve()) if cfg.runtime.base_cache_dir else None,
        checks=cfg.checks.frame_checks(), method=plan.method.as_dict(),
        text_cache=text_cache_root(str(plan.model_path), cfg.model.dtype, cfg.generation.model_dump(mode="json"),
                                   [*(r.prompt for r in plan.rows), *plan.method.texts()]),  # all cached: no T5
    )


def row_payload(row, paired_on: str, has_eraser: bool) -> dict:
    """What a worker gets for one row: the row as a dict, plus whether its pair gets PSNR/SSIM.

    has_eraser: whether the row gets a second video (the eval method's: `plan.method.makes_video`)."""
    d = row.as_dict()
    d["paired"] = has_eraser and (paired_on == "all" or (paired_on == "preserve" and row.set == "preserve"))
    d.setdefault("source", row.source)
    return d
