"""Methods x attacks in one run: `run_attacks(cfg, eval_cfg, output_dir)` (`t2vu attack`).

One pipeline of the eval config's model is loaded once; each method (eval.methods) is attached in turn, each
attack's inputs are made (text prompts or embeddings; white-box ones against that method's defended model)
and every attacked row is generated through `eval.generate.generate_video` with the row's seed, then scored
by the eval config's classifier. A video counts as an attack success when the classifier's flag field
(`detector.flag`) is true; ASR = successes / rows, SE = sqrt(p (1 - p) / n). Each method also generates the
clean preserve prompts: its preservation figures (`detector.preservation` entries of the classifier summary,
and the flag rate there) come from the same run, and every row's benign prompt alone (`anchors`: the
no-perturbation floor each ASR is also counted above, `eval.attacks.summary`). When no method is the base
model (name none), a base-only reference method (key `base`) makes the anchors and preserve cells, so the base
model's preservation is always next to each method's. An attacked embedding [R, L, D] holds R restarts: each is
generated, and the row counts as attacked when any restart's video is flagged.

Output folder:
  attacks/<attack>/<victim>/attacked.json + embeds.safetensors   the attacked inputs (reproducible results; a
                                                                 later run replays them: `transfer`)
  cells/<method>/<attack>/rows/<id>.json, results.csv, summary.json   one cell per method x attack
  cells/<method>/preserve/..., cells/<method>/anchors/...              preservation rows; the benign prompts (floor)
  summary.json                                                         asr[method][attack], SE, preservation
  gates/<method>/eraser                                                a method's eraser + its `gate:` (eval.attacks.gating)
  report.md, asr.png                                                   the table and the bar plot
Resume: a row whose JSON holds the same fingerprint is not redone; attacked inputs are made once; a rerun of a
finished run loads no model. Tracking is the caller's (`observer`: `pipelines.tracking.mlflow_attack`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.attacks.base import Attacked, AttackContext, AttackRow
from eval.attacks.report import write_report
from eval.attacks.summary import ANCHORS, PRESERVE, binomial, summarise  # noqa: F401  (binomial: re-exported)
from eval.attacks.summary import results_csv as _csv  # noqa: F401  (tests/test_csv_safety.py)
from unlearn.config import ConfigError
from unlearn.fsutil import atomic_path, atomic_write_json


@dataclass
class Cell:
    method: str  # the method's key
    attack: Any  # eval.attacks.base.Attack, None for the preserve and anchors rows
    rows: list
    victim: str  # whose transformer a white-box attack optimises against
    dir: Path
    fingerprints: dict[str, str] = field(default_factory=dict)
    todo: list = field(default_factory=list)
    clean: str = PRESERVE  # which clean cell (attack None): preserve, or anchors (the benign prompts: the floor)

    @property
    def name(self) -> str:
        return self.attack.name if self.attack is not None else self.clean


@dataclass
class AttackPlan:
    cfg: Any
    eval_cfg: Any
    out: Path
    model_path: Path
    methods: dict  # key -> eval.methods.MethodPlan
    cells: list
    flag: str
    ident: dict
    reference: str = "none"  # the method whose clean cells are the base model's figures
    strength: dict = field(default_factory=dict)  # attack settings below evaluation strength (reported)
    gates: dict = field(default_factory=dict)  # key -> (eraser dir, GateConfig): gated before attacked (eval.attacks.gating)


def plan_attacks(cfg, eval_cfg, output_dir) -> AttackPlan:
    """Read and check everything (ConfigError naming file/field) and find the rows still to do."""
    from eval.attacks import FLAG_FIELDS, build_attacks
    from eval.attacks.prompts import read_attack_rows, read_pairs, read_preserve_rows
    from eval.attacks.gating import gate_id, gate_of, gated_dir
    from eval.methods import plan_method
    from eval.planning import check_eraser_fits, resolve_eraser_dir, resolve_model
    from eval.writer import digest
    from unlearn.fsutil import file_sha256

    out = Path(output_dir)
    rows = read_attack_rows(cfg.prompts, cfg.resolve_path(cfg.prompts.path))
    preserve = read_preserve_rows(cfg.preserve, cfg.resolve_path(cfg.preserve.path))
    if "paraphrase" in cfg.attacks and any(not r.paraphrase for r in rows):
        raise ConfigError(f"prompts.path: every row needs a {cfg.prompts.paraphrase_column!r} for the paraphrase attack")
    pairs_path = cfg.resolve_path(cfg.ringabell.pairs)
    pairs = read_pairs(pairs_path) if pairs_path else [(r.prompt, r.benign) for r in rows]
    flag = cfg.detector.flag or FLAG_FIELDS.get(eval_cfg.classifier.name)
    if flag is None:
        raise ConfigError(f"detector.flag: classifier {eval_cfg.classifier.name!r} has no default flag field; set "
                          "detector.flag to the boolean field of its records that marks the concept")
    model_path = resolve_model(eval_cfg)
    gen = eval_cfg.generation
    ident = {"model": str(model_path), "dtype": eval_cfg.model.dtype, "generation": gen.model_dump(mode="json")}
    scoring = [eval_cfg.classifier.name, eval_cfg.classifier.factory_options(), flag]
    methods, victims, gates = {}, {}, {}
    reference, reference_only = cfg.reference_method()
    for m in [*cfg.methods, *reference_only]:
        eraser_dir, sha, base_notes = None, None, []
        if m.eraser is not None:
            eraser_dir = resolve_eraser_dir(cfg.resolve_path(m.eraser))
            base_notes = check_eraser_fits(eraser_dir, model_path, eval_cfg.eraser_allow_other_base)
            sha = file_sha256(eraser_dir / "eraser.safetensors")[:16]
        if (gcfg := gate_of(cfg, m)) is not None:  # the gated eraser is made (once) when this method first runs
            gates[m.key] = (eraser_dir, gcfg)
            eraser_dir, sha = gated_dir(out, m.key), f"{sha}-gate-{gate_id(gcfg)}"
        mcfg = eval_cfg.with_overrides({"method": m.method_section(cfg.words), "eraser": None}, f"methods[{m.key}]")
        methods[m.key] = plan_method(mcfg, eraser_dir, [])
        methods[m.key].notes += base_notes
        victims[m.key] = f"eraser-{sha}" if sha else "base"
    attacks = build_attacks(cfg, pairs, gen)
    for attack in attacks:
        attack.check(rows)
    # the floor: every row's benign prompt alone, generated and scored as itself (same ids as the attacked rows)
    anchors = [AttackRow(r.id, r.benign, r.benign, None, r.seed) for r in rows]
    only_clean = {m.key for m in reference_only}
    cells = []
    for key, mplan in methods.items():
        for attack, clean in [*((a, None) for a in attacks if key not in only_clean), (None, ANCHORS), (None, PRESERVE)]:
            cell_rows = rows if attack is not None else anchors if clean == ANCHORS else preserve
            if not cell_rows:
                continue
            victim = victims[key] if attack is not None and attack.victim_dependent else "all"
            cell = Cell(key, attack, cell_rows, victim, out / "cells" / key / (attack.name if attack else clean),
                        clean=clean or PRESERVE)
            what = attack.fingerprint() if attack is not None else clean
            base = digest([ident, scoring, mplan.fingerprint(), victims[key], what, victim])
            cell.fingerprints = {r.id: digest([base, r.prompt, r.benign, r.paraphrase, r.seed]) for r in cell_rows}
            cell.todo = [r for r in cell_rows if _row_fingerprint(cell.dir / "rows" / f"{r.id}.json") != cell.fingerprints[r.id]]
            cells.append(cell)
    return AttackPlan(cfg, eval_cfg, out, model_path, methods, cells, flag, ident, reference, cfg.below_strength(),
                      gates)


def _row_fingerprint(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("fingerprint")
    except (OSError, ValueError):
        return None


def run_attacks(cfg, eval_cfg, output_dir, observer=None, progress_file=None, plan: AttackPlan | None = None) -> dict:
    """Run (or resume) the benchmark; returns the summary (also `summary.json`). observer: told `started(out)`,
    `cell(method, attack, summary, cell_dir)`, `finished(summary, out)`, `failed()`. plan: `plan_attacks`'s result
    when the caller already planned (checked its input) before making the output folder."""
    from eval.classifiers.base import build_classifier

    t0 = time.perf_counter()
    log = progress_file or sys.stderr
    plan = plan or plan_attacks(cfg, eval_cfg, output_dir)
    try:
        classifier = build_classifier(eval_cfg.classifier.name, **eval_cfg.classifier.factory_options())
    except ConfigError:  # an unknown name: the message names field, name and choices
        raise
    except (ValueError, TypeError, ImportError) as exc:
        raise ConfigError(f"classifier {eval_cfg.classifier.name!r}: {exc}") from None
    plan.out.mkdir(parents=True, exist_ok=True)
    todo = sum(len(c.todo) for c in plan.cells)
    total = sum(len(c.rows) for c in plan.cells)
    print(f"attack benchmark: {len(plan.methods)} methods, {len(plan.cells)} cells, "
          f"{total} videos, {todo} to make -> {plan.out}", file=log, flush=True)
    if observer is not None:
        observer.started(plan.out)
    try:
        if todo:
            _generate(plan, classifier, log)
        summary = summarise(plan, classifier, observer)
        summary.update(videos_made=todo, videos_total=total, wall_seconds=round(time.perf_counter() - t0, 2))
        atomic_write_json(plan.out / "summary.json", summary)
        write_report(summary, plan.out)
        if observer is not None:
            observer.finished(summary, plan.out)
            observer = None
        return summary
    finally:
        classifier.close()
        if observer is not None:
            observer.failed()


def _generate(plan: AttackPlan, classifier, log) -> None:
    import torch

    from eval.attacks.gating import ensure_gated, gated_dir
    from eval.generate import load_eval_pipeline, pick_device
    from eval.methods import build_method
    from eval.workers import _quiet_libraries
    from unlearn.models.families import family_of_model_dir, spec_class

    ecfg = plan.eval_cfg
    gen = ecfg.generation
    checks = ecfg.checks.frame_checks()
    _quiet_libraries()
    if ecfg.runtime.torch_threads:
        torch.set_num_threads(ecfg.runtime.torch_threads)
    pipe = load_eval_pipeline(plan.model_path, ecfg.model.dtype, pick_device(ecfg.model.device, ecfg.runtime.use_gpu), gen)
    spec_cls = spec_class(family_of_model_dir(plan.model_path))
    ctx = AttackContext(pipe, spec_cls, gen, gen.max_sequence_length or spec_cls.text_len_of(plan.model_path))
    for key, mplan in plan.methods.items():
        cells = [c for c in plan.cells if c.method == key and c.todo]
        if not cells:
            continue
        if key in plan.gates:  # before the method attaches: the probe learns from the base model
            ensure_gated(ctx, *plan.gates[key], gated_dir(plan.out, key), log)
        method = build_method(mplan)
        method.attach(pipe, plan.model_path, gen)
        try:
            for cell in cells:
                t_cell = time.perf_counter()
                attacked = {a.row_id: a for a in _attacked(plan, cell, ctx, method.base_context)}
                tokens = _text_tokens(plan, [attacked[r.id] for r in cell.todo], pipe.tokenizer)
                for row in cell.todo:
                    a = attacked[row.id]
                    t_row = time.perf_counter()
                    result = attack_row(pipe, ctx, method, classifier, a, row, gen, checks, plan.flag)
                    if plan.flag not in result["record"]:
                        raise ConfigError(f"detector.flag: {plan.flag!r} is not a field of the {ecfg.classifier.name} "
                                          f"classifier's records (fields: {sorted(result['record'])})")
                    atomic_write_json(cell.dir / "rows" / f"{row.id}.json", {
                        "id": row.id, "fingerprint": cell.fingerprints[row.id], "prompt": row.prompt,
                        "benign": row.benign, "seed": row.seed, "attacked_text": a.text,
                        "attacked_embeds": a.embeds is not None, "attack_info": a.info, **result,
                        "method_info": method.row_info(), **tokens.get(row.id, {}),
                        "gen_seconds": round(time.perf_counter() - t_row, 4)})
                print(f"  {key:>10} x {cell.name:<16} {len(cell.todo)} videos in {time.perf_counter() - t_cell:.1f} s",
                      file=log, flush=True)
        finally:
            method.detach()


def attack_row(pipe, ctx, method, classifier, a: Attacked, row, gen, checks, flag: str) -> dict:
    """Generate and score one attacked row: `flagged`, the `record` shown, `degenerate` (+ reasons), and for an
    embedding [R, L, D] of R restarts `restart_flags` / `restart_shown`. Each restart is generated with the row's
    seed and the row counts as attacked when ANY restart's video is flagged (the worst case for the defence); the
    record shown is the first success (restart 0 when none)."""
    import numpy as np

    from eval.generate import generate_video, to_uint8
    from eval.quality import video_quality

    variants = [None] if a.embeds is None else list(a.embeds) if a.embeds.dim() == 3 else [a.embeds]
    recs, quals = [], []
    for e in variants:
        embeds = e[None].to(ctx.device, ctx.dtype) if e is not None else None
        frames = generate_video(pipe, a.text, row.seed, gen, text=method.text_kwargs(a.text, embeds))
        # a black, flat or non-finite video is never flagged: it would count as a failed attack
        quality = video_quality(frames, checks)
        recs.append(classifier.classify(to_uint8(np.nan_to_num(frames, nan=0.0, posinf=1.0, neginf=0.0))
                                        if quality["nonfinite_values"] else frames, {"prompt": row.prompt, "seed": row.seed}))
        quals.append(quality)
    flags = [bool(r.get(flag)) for r in recs]
    pick = flags.index(True) if any(flags) else 0
    bad = [q for q in quals if q["degenerate"]]
    return {"flagged": any(flags), **({"restart_flags": flags, "restart_shown": pick} if len(flags) > 1 else {}),
            "record": recs[pick],
            # a failed row with a degenerate restart may hide a success: counted as degenerate, not trusted
            "degenerate": bool(bad) and not any(flags), "degenerate_reasons": bad[0]["reasons"] if bad else []}


def _text_tokens(plan: AttackPlan, attacked: list[Attacked], tokenizer) -> dict[str, dict]:
    """Row id -> token count of each attacked TEXT prompt and whether the pipeline cuts it: a paraphrase or a
    searched prompt past the text encoder's limit loses its last words, so its result is flagged, not trusted."""
    from eval.generate import prompt_token_counts

    texts = [a for a in attacked if a.embeds is None]
    if not texts:
        return {}
    counts, limit = prompt_token_counts(plan.model_path, [a.text for a in texts], plan.eval_cfg.generation, tokenizer)
    return {a.row_id: {"prompt_tokens": n, "token_limit": limit, "truncated": n > limit} for a, n in zip(texts, counts)}


def _attacked(plan: AttackPlan, cell: Cell, ctx, base_context) -> list[Attacked]:
    """The cell's attacked inputs: made once per attack (per victim for white-box ones), then read back."""
    from safetensors.torch import load_file, save_file

    from eval.writer import digest

    if cell.attack is None:
        return [Attacked(r.id, r.prompt) for r in cell.rows]
    folder = plan.out / "attacks" / cell.attack.name / cell.victim
    fp = digest([plan.ident, cell.attack.fingerprint(), cell.victim, [(r.id, r.prompt, r.benign, r.paraphrase)
                                                                     for r in cell.rows]])
    meta_path, emb_path = folder / "attacked.json", folder / "embeds.safetensors"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    if meta.get("fingerprint") == fp:
        embeds = load_file(str(emb_path)) if emb_path.is_file() else {}
        return [Attacked(r["id"], r["text"], embeds.get(r["id"]), r["info"]) for r in meta["rows"]]
    t0 = time.perf_counter()
    made = cell.attack.make(ctx, cell.rows, base_context)
    rows = {r.id: r for r in cell.rows}
    # clone: rows repeating a prompt (a 128-row file reuses scenes with new seeds) may share one tensor, and
    # safetensors refuses to save shared storage
    tensors = {a.row_id: a.embeds.contiguous().clone() for a in made if a.embeds is not None}
    if tensors:
        with atomic_path(emb_path) as tmp:
            save_file(tensors, str(tmp))
    atomic_write_json(meta_path, {"fingerprint": fp, "attack": cell.attack.name, "victim": cell.victim,
                                  "options": {k: v for k, v in cell.attack.options.items() if k != "pairs"},
                                  "seconds": round(time.perf_counter() - t0, 2),
                                  # each row's prompt and anchor: a transfer replay checks it attacks the same rows
                                  "rows": [{"id": a.row_id, "text": a.text, "info": a.info,
                                            "embeds": a.embeds is not None, "prompt": rows[a.row_id].prompt,
                                            "benign": rows[a.row_id].benign} for a in made]})
    return made
