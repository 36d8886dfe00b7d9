"""The evaluation stage: prompts -> videos (base and erased, same seeds) -> scores -> results.

    summary = run_eval(cfg, "runs/eval-x")          # library use (Tune trials, `t2vu run`)
    t2vu eval --config configs/eval/tiny.yaml --output runs/eval-x

Shape of a run:

  driver                     generator (EvalWorker: one pipeline, loaded once)      consumer
  ------                     ---------------------------------------------------    --------
  validate CSVs, resume  ->  row: base video (erasers disabled), erased video   ->  mp4 + GIF, classifier,
  write rows/<id>.json   <-       same seed, same pipeline                           PSNR/SSIM, CLIP
  progress bar, observer

- Generators: `runtime.num_actors: 0` runs one `EvalWorker` in this process (no Ray);
  N >= 1 runs N Ray actors on the Ray the caller started (GPU actors with `use_gpu`), rows
  handed out one at a time to whichever actor has room, so a slow actor never holds up the rest.
- Each worker has one consumer with a FIFO queue. Every finished video (base, then erased)
  is queued the moment it exists and the generator moves on: the consumer writes mp4 + GIF,
  classifies, and computes paired metrics while the next video is generated. Each worker
  takes `queue_depth` rows at once (a lock lets one generate while the others wait for
  their scores), which bounds the videos held in memory. `runtime.scorer: process` scores
  in a spawned child process (no GIL shared with generation), `thread` in one thread of the
  worker, `inline` without overlap.
- Every finished row is written atomically as `rows/<id>.json` by the driver (see
  `eval.writer`); a rerun skips finished rows, so an interrupted eval ends with exactly one
  result per row.
- On a multi-node Ray cluster the output directory (and `runtime.base_cache_dir`) must be
  shared storage: actors write videos and GIFs there, the driver reads the GIFs for the grid.

Modules: eval.planning (config -> EvalPlan, before any model loads), eval.workers (the
generator), eval.scoring (the consumer), eval.backends (in-process or Ray actors), this one
(the stage: resume, results, progress, summary). Tracking is the caller's: an
`eval.observer.EvalObserver` passed in (MLflow: `pipelines.tracking.mlflow_eval.run_tracked_eval`).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import IO, Any

from eval.backends import make_backend
from eval.observer import EvalObserver
from eval.planning import EvalPlan, eval_config_record, plan_eval, row_payload, worker_spec
from eval.scoring import GIFS_DIR, VIDEOS_DIR
from unlearn.config import ConfigError
from unlearn.fsutil import temp_files

log = logging.getLogger(__name__)


def run_eval(cfg, output_dir: str | Path, prompts: str | Path | None = None, limit: int | None = None, *,
             eraser: str | Path | None = None, progress: bool | None = None,
             progress_file: IO[str] | None = None, observer: EvalObserver | None = None, transformer=None) -> dict:
    """Run the evaluation stage; returns the summary dict (also written to `summary.json`).

    cfg: `eval.config.EvalConfig`. prompts: a CSV overriding `cfg.prompts.path`. limit: first N
    rows of each prompt set. eraser: overrides `cfg.eraser`. progress: show the bar (None =
    `cfg.runtime.progress`); progress_file: where it goes (None = sys.stderr). observer: told
    of the run's start, rows and end (see `eval.observer`); `cfg.mlflow` is read only by the
    MLflow observer. Reruns into the same `output_dir` skip finished rows.

    With `runtime.scorer: process` (the default) the scorer is a spawned process, which
    re-imports the main module: call run_eval from scripts under `if __name__ == "__main__":`.
    With `runtime.num_actors` >= 1, Ray must already be initialised by the caller.
    transformer: generate with this already loaded backbone instead of loading one (in-process
    only; a training worker's proxy eval: the eraser is attached for the rows and removed after).
    """
    from eval.checks import raise_if_degenerate
    from eval.classifiers.base import build_classifier
    from eval.metrics import aggregate
    from eval.report import finish_report
    from eval.writer import ResultStore, atomic_write_json

    t_start = time.perf_counter()
    plan = plan_eval(cfg, output_dir, prompts=prompts, limit=limit, eraser=eraser)
    out = plan.output_dir
    try:  # unknown plugin names/options fail here, before any model loads or output exists
        classifier = build_classifier(cfg.classifier.name, **cfg.classifier.factory_options())
    except ConfigError:  # an unknown name: the message names field, name and choices
        raise
    except (ValueError, TypeError, ImportError) as exc:
        raise ConfigError(f"classifier {cfg.classifier.name!r}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    print(plan.banner, file=progress_file or sys.stderr, flush=True)
    store = ResultStore(out)
    _remove_stale_temp_files(out)
    done, stale = store.finished(plan.row_fingerprints)
    if stale:
        log.warning("%d row results in %s were made with other settings; recomputing them", stale, out)
    todo = [r for r in plan.rows if r.id not in done]
    atomic_write_json(out / "eval_config.json", eval_config_record(plan))  # the config as run + provenance

    observed = observer.started(out) if observer is not None else {}

    t_gen = time.perf_counter()
    timing: dict[str, float] = {"setup_seconds": round(t_gen - t_start, 3)}
    try:
        workers_info: list[dict] = []
        if todo:
            show = cfg.runtime.progress if progress is None else progress

            def on_result(result: dict) -> None:
                store.write(result)
                done[result["id"]] = result
                if observer is not None:
                    observer.row(result)

            workers_info = _generate(plan, todo, len(done), on_result, timing, show, progress_file or sys.stderr,
                                     transformer)
        gen_wall = time.perf_counter() - t_gen
        t_report = time.perf_counter()
        results = [{**done[r.id], **r.result_fields()} for r in plan.rows]  # + what planning knows of the row
        metrics = aggregate(results, classifier)
        summary = _summary(plan, metrics, results, classifier, n_new=len(todo), n_resumed=len(plan.rows) - len(todo),
                           stale=stale, workers=workers_info, gen_wall=gen_wall)
        summary = finish_report(plan, results, summary, classifier)  # results.csv, grid, reports
        timing["report_seconds"] = round(time.perf_counter() - t_report, 3)
        summary["timing"] = timing
        summary["wall_seconds"] = round(time.perf_counter() - t_start, 3)
        summary.update(observed)
        if observer is not None:
            observer.finished(summary, results)
        atomic_write_json(out / "summary.json", summary)
        raise_if_degenerate(summary)  # after every output is written: they stay for the user to inspect
        if observer is not None:
            observer.completed(out / "summary.json")
            observer = None
        return summary
    finally:
        classifier.close()
        if observer is not None:
            observer.failed()


def _generate(plan: EvalPlan, todo: list, n_done: int, on_result, timing: dict, show: bool, progress_file,
              transformer=None) -> list:
    """Generate and score the rows still to do on the configured backend; returns the workers' info.

    on_result(result) gets each finished row's result record (in this thread, as rows finish).
    """
    from tqdm.auto import tqdm

    cfg = plan.cfg
    by_id = {r.id: r for r in plan.rows}
    mapped_cols = sorted({cfg.prompts.prompt_column, cfg.prompts.seed_column, cfg.prompts.concept_column,
                          cfg.prompts.concept_type_column, cfg.preserve.prompt_column, cfg.preserve.seed_column,
                          cfg.preserve.concept_column, cfg.preserve.concept_type_column} - {None})
    bar = tqdm(total=len(plan.rows), initial=n_done, desc="eval rows", unit="row", disable=not show,
               dynamic_ncols=True, file=progress_file)

    def finished(payload: dict, res: dict) -> None:
        row = by_id[payload["row_id"]]
        on_result({
            "id": row.id, "set": row.set, "index": row.index, "prompt": row.prompt, "seed": row.seed,
            "concept": row.concept, "concept_type": row.concept_type, "source": row.source,
            "fingerprint": plan.row_fingerprints[row.id], **res,
            "fields": row.fields, "mapped_columns": mapped_cols,
        })
        bar.update(1)

    try:
        t_backend = time.perf_counter()
        backend = make_backend(worker_spec(plan), cfg.runtime, len(todo), transformer,
                               say=lambda line: print(line, file=progress_file, flush=True))
        timing["worker_start_seconds"] = round(time.perf_counter() - t_backend, 3)
        payloads = [row_payload(r, cfg.metrics.paired_on, plan.method.makes_video) for r in todo]
        try:
            backend.run(payloads, finished)
        except BaseException:
            backend.close(abort=True)
            raise
        backend.close()
        return backend.workers_info
    finally:
        bar.close()


def _remove_stale_temp_files(out: Path) -> None:
    """Half-written temporary files of a killed run (all our writes are temp file + rename)."""
    for sub in ("rows", VIDEOS_DIR, GIFS_DIR, "."):
        for p in temp_files(out / sub):
            p.unlink(missing_ok=True)


def _summary(plan: EvalPlan, metrics: dict, results: list[dict], classifier, *, n_new: int, n_resumed: int,
             stale: int, workers: list, gen_wall: float) -> dict:
    cfg = plan.cfg
    n_target = sum(1 for r in results if r["set"] == "target")
    describe = getattr(classifier, "describe", None)
    info = describe() if callable(describe) else {}
    gen_s = [r.get("gen_seconds") or 0.0 for r in results]
    summary: dict[str, Any] = dict(metrics)
    summary.update(
        rows_total=len(results),
        rows_target=n_target,
        rows_preserve=len(results) - n_target,
        rows_evaluated=n_new,
        rows_resumed=n_resumed,
        rows_recomputed_stale=stale,
        classifier=cfg.classifier.name,
        **info,
        model=str(plan.model_path),
        eraser=str(plan.eraser) if plan.eraser else None,
        generation=cfg.generation.model_dump(mode="json"),
        fingerprint=plan.fingerprint,
        workers=workers,
        generation_seconds_total=round(float(sum(gen_s)), 3),
        run_seconds=round(gen_wall, 3),
    )
    return summary
