"""The evaluation stage: prompts -> videos (base and erased, same seeds) -> scores -> results.

    summary = run_eval(cfg, "runs/eval-x")          # library use (Tune trials, `t2vu run`)
    t2vu eval --config configs/eval/tiny.yaml --output runs/eval-x

Shape of a run:

  driver                     generator (EvalWorker: one pipeline, loaded once)      consumer
  ------                     ---------------------------------------------------    --------
  validate CSVs, resume  ->  row: base video (erasers disabled), erased video   ->  mp4 + GIF, classifier,
  write rows/<id>.json   <-       same seed, same pipeline                           PSNR/SSIM, CLIP
  progress bar, MLflow

- Generators: `runtime.num_actors: 0` runs one `EvalWorker` in this process (no Ray);
  N >= 1 runs N Ray actors (GPU actors with `use_gpu`), rows handed out one at a time to
  whichever actor has room, so a slow actor never holds up the rest.
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
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from unlearn.config import ConfigError

log = logging.getLogger(__name__)

VIDEOS_DIR, GIFS_DIR = "videos", "gifs"


# --- what a worker needs (picklable: crosses into Ray actors and scorer processes) -----------------

@dataclass
class ScorerSpec:
    classifier: str
    classifier_options: dict
    output_dir: str
    fps: int = 8
    save_videos: bool = True
    save_gifs: bool = True
    gif_height: int = 128
    paired_frames: int | str = "all"
    clip_model: str | None = None
    clip_frames: int = 8


@dataclass
class WorkerSpec:
    model_path: str
    dtype: str
    device: str | None
    use_gpu: bool
    eraser: str | None
    generation: dict  # GenerationConfig as a dict
    scorer: ScorerSpec
    scorer_mode: str = "process"
    scorer_nice: int = 0
    base_cache_dir: str | None = None
    torch_threads: int | None = None
    quiet: bool = True


def _quiet_libraries() -> None:
    """No per-prompt truncation warnings or loading bars from diffusers/transformers over our bar."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


@dataclass
class VideoJob:
    """One finished video handed to the consumer."""

    row: dict  # PromptRow.as_dict() + "paired": bool
    which: str  # "base" | "erased"
    frames: np.ndarray  # uint8 [F, H, W, 3]
    # The base video of the same row, for paired PSNR/SSIM (erased jobs of paired rows only).
    pair_with: np.ndarray | None = None


# --- the consumer ----------------------------------------------------------------------------------

class Scorer:
    """Scores one video: writes its mp4 + GIF, classifies it, CLIP score, paired metrics."""

    def __init__(self, spec: ScorerSpec):
        from eval.classifiers.base import build_classifier

        self.spec = spec
        self.classifier = build_classifier(spec.classifier, **spec.classifier_options)
        self.clip = None
        if spec.clip_model:
            from eval.metrics import ClipScorer

            self.clip = ClipScorer(spec.clip_model, frames=spec.clip_frames)

    def score(self, job: VideoJob) -> dict:
        from eval.classifiers.nudenet import sample_indices
        from eval.generate import write_gif, write_mp4
        from eval.metrics import psnr, ssim

        t0 = time.perf_counter()
        s, row, which, frames = self.spec, job.row, job.which, job.frames
        rid = row["row_id"]
        files = {}
        if s.save_videos:
            files["video"] = f"{VIDEOS_DIR}/{rid}_{which}.mp4"
            write_mp4(frames, Path(s.output_dir) / files["video"], fps=s.fps)
        if s.save_gifs:
            files["gif"] = f"{GIFS_DIR}/{rid}_{which}.gif"
            write_gif(frames, Path(s.output_dir) / files["gif"], fps=s.fps, height=s.gif_height)
        rec = self.classifier.classify(frames.astype(np.float32) / 255.0, row)
        out: dict[str, Any] = {"files": files, "record": {k: _plain(v) for k, v in rec.items()}}
        if self.clip is not None:
            out["clip_score"] = self.clip.score(frames, row["prompt"])
        if job.pair_with is not None:
            idx = sample_indices(len(frames), s.paired_frames)
            out["psnr"] = psnr(job.pair_with[idx], frames[idx])
            out["ssim"] = ssim(job.pair_with[idx], frames[idx])
        out["seconds"] = time.perf_counter() - t0
        return out

    def close(self) -> None:
        self.classifier.close()


def _save_npy_atomic(arr: np.ndarray, path: Path) -> None:
    from unlearn.fsutil import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


_PROCESS_SCORER: Scorer | None = None


def _scorer_process_init(spec: ScorerSpec, nice: int = 0) -> None:
    global _PROCESS_SCORER
    import pipelines.env as env

    env.apply_offline_env()
    if nice:
        try:
            os.nice(nice)
        except OSError:  # not permitted on some systems; scoring still works
            pass
    _PROCESS_SCORER = Scorer(spec)


def _scorer_process_score(job: VideoJob) -> dict:
    assert _PROCESS_SCORER is not None
    return _PROCESS_SCORER.score(job)


class _Done(Future):
    def __init__(self, fn, *args):
        super().__init__()
        try:
            self.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered through .result()
            self.set_exception(exc)


SCORER_DIED = (
    "the scorer process died. If run_eval is called from a script, put the call under "
    "`if __name__ == '__main__':` (the scorer process is spawned and re-imports the main module), "
    "or set runtime.scorer: thread"
)


class Consumer:
    """The scoring side of a worker: ONE consumer with a FIFO queue of finished videos.

    process: a child process (spawned; no GIL shared with generation), thread: one thread,
    inline: scores at submit time (no overlap; debugging). `submit` returns a Future at once.
    """

    def __init__(self, spec: ScorerSpec, mode: str, nice: int = 0):
        self.mode = mode
        self._scorer = None
        if mode == "process":
            import multiprocessing as mp

            # spawn: a fresh interpreter that imports numpy/onnxruntime/cv2 (torch only for CLIP);
            # it starts while the pipeline loads and generation begins.
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                             initializer=_scorer_process_init, initargs=(spec, nice))
        elif mode == "thread":
            self._scorer = Scorer(spec)
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eval-scorer")
        elif mode == "inline":
            self._scorer = Scorer(spec)
            self._pool = None
        else:
            raise ValueError(f"runtime.scorer must be process, thread or inline, got {mode!r}")

    def submit(self, job: VideoJob) -> Future:
        if self.mode == "process":
            try:
                return self._pool.submit(_scorer_process_score, job)
            except BrokenProcessPool as exc:
                raise RuntimeError(SCORER_DIED) from exc
        if self.mode == "thread":
            return self._pool.submit(self._scorer.score, job)
        return _Done(self._scorer.score, job)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._scorer is not None:
            self._scorer.close()


# --- the generator ---------------------------------------------------------------------------------

class EvalWorker:
    """One pipeline (and eraser) loaded once; generates rows and hands each finished video
    to its consumer, then moves on.

    Runs in the driver process (`num_actors: 0`) or as a Ray actor with
    `max_concurrency = queue_depth` (the same class). `process(row)` is called from up to
    `queue_depth` threads: one generates (under a lock) while the others wait for their
    row's scores.
    """

    def __init__(self, spec: WorkerSpec):
        import pipelines.env as env

        env.apply_offline_env()
        import torch

        from eval.config import GenerationConfig

        if spec.quiet:
            _quiet_libraries()
        from eval.generate import load_eval_pipeline, pick_device

        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        self.spec = spec
        # Start the consumer first: a scorer process spawns while the pipeline loads.
        self.consumer = Consumer(spec.scorer, spec.scorer_mode, spec.scorer_nice)
        self.gen = GenerationConfig.model_validate(spec.generation)
        self.device = pick_device(spec.device, spec.use_gpu)
        self.pipe = load_eval_pipeline(spec.model_path, spec.dtype, self.device, self.gen)
        self.handle = None
        if spec.eraser:
            from unlearn.eraser import load_eraser

            self.handle = load_eraser(self.pipe, spec.eraser)
        self._gen_lock = threading.Lock()

    def ready(self) -> dict:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname(), "device": self.device}

    def _video(self, row: dict, erased: bool) -> np.ndarray:
        from eval.generate import generate_video, to_uint8

        if erased:
            return to_uint8(generate_video(self.pipe, row["prompt"], row["seed"], self.gen))
        cached = self._base_cache_path(row)
        if cached is not None and cached.is_file():
            try:
                return np.load(cached)
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable cached base video %s: %s", cached, exc)
        if self.handle is None:
            frames = to_uint8(generate_video(self.pipe, row["prompt"], row["seed"], self.gen))
        else:
            with self.handle.disabled():  # the base model: same pipeline, erasers off
                frames = to_uint8(generate_video(self.pipe, row["prompt"], row["seed"], self.gen))
        if cached is not None:
            _save_npy_atomic(frames, cached)
        return frames

    def _base_cache_path(self, row: dict) -> Path | None:
        if not self.spec.base_cache_dir:
            return None
        from eval.writer import digest

        key = digest([self.spec.model_path, self.spec.dtype, str(self.pipe.device.type), self.spec.generation,
                      row["prompt"], int(row["seed"])], n=24)
        return Path(self.spec.base_cache_dir) / f"{key}.npy"

    def process(self, row: dict) -> dict:
        """Generate a row's base (and erased) video; each goes to the consumer as soon as it exists."""
        futures: dict[str, Future] = {}
        with self._gen_lock:
            t0 = time.perf_counter()
            base = self._video(row, erased=False)
            futures["base"] = self.consumer.submit(VideoJob(row, "base", base))
            erased = None
            if self.handle is not None:
                erased = self._video(row, erased=True)
            gen_s = time.perf_counter() - t0
        if erased is not None:
            pair = base if row.get("paired") else None
            futures["erased"] = self.consumer.submit(VideoJob(row, "erased", erased, pair_with=pair))
        del base, erased
        try:
            parts = {which: fut.result() for which, fut in futures.items()}
        except BrokenProcessPool as exc:
            raise RuntimeError(SCORER_DIED) from exc
        out: dict[str, Any] = {"files": {"base": None, "erased": None}, "records": {"base": None, "erased": None}}
        for which, part in parts.items():
            out["files"][which] = part["files"]
            out["records"][which] = part["record"]
            if "clip_score" in part:
                out[f"clip_score_{which}"] = part["clip_score"]
            for k in ("psnr", "ssim"):
                if k in part:
                    out[k] = part[k]
        out["gen_seconds"] = round(gen_s, 4)
        out["score_seconds"] = round(sum(p["seconds"] for p in parts.values()), 4)
        return out

    def generate_only(self, row: dict) -> float:
        """Generation alone, nothing written or scored (the benchmark's reference); seconds."""
        with self._gen_lock:
            t0 = time.perf_counter()
            self._video(row, erased=False)
            if self.handle is not None:
                self._video(row, erased=True)
            return time.perf_counter() - t0

    def close(self) -> None:
        self.consumer.close()
        if self.handle is not None:
            self.handle.remove()


# --- backends: where the workers run ------------------------------------------------------------------

class LocalBackend:
    """One EvalWorker in this process; `queue_depth` rows in flight on a thread pool."""

    def __init__(self, spec: WorkerSpec, queue_depth: int):
        self.worker = EvalWorker(spec)
        self.depth = queue_depth
        self.pool = ThreadPoolExecutor(max_workers=queue_depth, thread_name_prefix="eval-row")
        self.workers_info = [self.worker.ready()]

    def run(self, rows: list[dict], on_result: Callable[[dict, dict], None]) -> None:
        pending: dict[Future, dict] = {}
        it = iter(rows)
        try:
            for row in it:
                pending[self.pool.submit(self.worker.process, row)] = row
                if len(pending) >= self.depth:
                    break
            while pending:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in done:
                    row = pending.pop(fut)
                    res = _row_result(fut.result, row)
                    nxt = next(it, None)
                    if nxt is not None:
                        pending[self.pool.submit(self.worker.process, nxt)] = nxt
                    on_result(row, res)
        finally:
            for fut in pending:
                fut.cancel()

    def close(self, abort: bool = False) -> None:
        # abort (an error or Ctrl-C): do not wait for rows in flight; their results are lost
        # anyway and a rerun redoes them.
        self.pool.shutdown(wait=not abort, cancel_futures=True)
        if not abort:
            self.worker.close()


class RayBackend:
    """N Ray actors, one pipeline each; rows go to whichever actor has a free slot."""

    def __init__(self, spec: WorkerSpec, runtime, num_rows: int | None = None):
        import ray

        from pipelines.env import runtime_env_vars

        self.ray = ray
        self.started_ray = False
        n = runtime.num_actors if num_rows is None else max(1, min(runtime.num_actors, num_rows))
        if not ray.is_initialized():
            kw: dict[str, Any] = dict(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                                      runtime_env={"env_vars": runtime_env_vars()})
            address = runtime.ray_address or os.environ.get("RAY_ADDRESS")
            if address:
                kw["address"] = address
            else:  # a local Ray sized for the actors (logical CPUs; they mostly wait on each other)
                kw["num_cpus"] = max(os.cpu_count() or 1, math.ceil(n * runtime.cpus_per_actor))
            ray.init(**kw)
            self.started_ray = True
        self.depth = runtime.queue_depth
        actor_cls = ray.remote(EvalWorker)
        opts: dict[str, Any] = dict(
            num_cpus=runtime.cpus_per_actor, num_gpus=1 if runtime.use_gpu else 0,
            max_concurrency=runtime.queue_depth, runtime_env={"env_vars": runtime_env_vars()},
        )
        self.actors = [actor_cls.options(**opts).remote(spec) for _ in range(n)]
        try:
            self.workers_info = ray.get([a.ready.remote() for a in self.actors])
        except Exception:
            self.close()
            raise

    def run(self, rows: list[dict], on_result: Callable[[dict, dict], None]) -> None:
        ray = self.ray
        it = iter(rows)
        pending: dict[Any, tuple[int, dict]] = {}
        load = [0] * len(self.actors)

        def submit(a: int) -> bool:
            row = next(it, None)
            if row is None:
                return False
            pending[self.actors[a].process.remote(row)] = (a, row)
            load[a] += 1
            return True

        for _ in range(self.depth):
            for a in range(len(self.actors)):
                submit(a)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    a, row = pending.pop(ref)
                    load[a] -= 1
                    res = _row_result(lambda: ray.get(ref), row)
                    submit(a)
                    on_result(row, res)
        finally:
            for ref in pending:
                ray.cancel(ref)

    def close(self, abort: bool = False) -> None:
        ray = self.ray
        for a in getattr(self, "actors", []):
            if not abort:
                try:
                    ray.get(a.close.remote(), timeout=60)
                except Exception:  # noqa: BLE001 - best effort; the actor is killed next
                    pass
            ray.kill(a)
        if self.started_ray:
            ray.shutdown()


def _row_result(get: Callable[[], dict], row: dict) -> dict:
    try:
        return get()
    except Exception as exc:
        raise RuntimeError(
            f"evaluation of row {row['row_id']} ({row.get('source', '')} row {row['row_index'] + 1}) failed: {exc}"
        ) from exc


# --- the stage ------------------------------------------------------------------------------------

def resolve_eraser_dir(path: str | Path) -> Path:
    """An eraser directory, or a training output folder holding `eraser/`."""
    from unlearn.eraser import CONFIG_NAME, WEIGHTS_NAME

    p = Path(path).expanduser()
    if (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file():
        return p
    if (p / "eraser" / CONFIG_NAME).is_file():
        return p / "eraser"
    raise ConfigError(
        f"eraser: {p} is not an eraser directory (expected {CONFIG_NAME} + {WEIGHTS_NAME}, or a training "
        "output folder with eraser/ inside); use eraser: null to evaluate the base model alone"
    )


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


def plan_eval(cfg, output_dir: str | Path, prompts: str | Path | None = None, limit: int | None = None,
              eraser: str | Path | None = None) -> EvalPlan:
    """Validate config, prompt files, model and eraser paths; compute resume fingerprints."""
    from eval.prompts import load_eval_rows
    from eval.writer import digest, file_digest
    from unlearn.models.cogvideox import check_model_dir
    from unlearn.models.registry import resolve_model_path

    rows = load_eval_rows(cfg, prompts=prompts, limit=limit)
    eraser_path = eraser if eraser is not None else cfg.resolve_path(cfg.eraser)
    eraser_dir = resolve_eraser_dir(eraser_path) if eraser_path else None
    try:
        model_path = resolve_model_path(cfg.model.path)
        if not str(cfg.model.path).startswith("builtin:") and not model_path.is_absolute() and not model_path.exists():
            model_path = cfg.resolve_path(cfg.model.path)
        model_path = check_model_dir(model_path).resolve()
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"model.path: {exc}") from None
    clip = cfg.resolve_path(cfg.metrics.clip_model)
    if clip is not None and not (clip / "config.json").is_file():
        raise ConfigError(
            f"metrics.clip_model: {clip} is not a local CLIP model directory (no config.json). Nothing is "
            "downloaded: save a transformers CLIPModel + CLIPProcessor there, or set clip_model: null"
        )
    classifier_options = cfg.classifier.factory_options()
    ident = {
        "model": str(model_path),
        "dtype": cfg.model.dtype,
        "eraser": file_digest(eraser_dir / "eraser.safetensors") if eraser_dir else None,
        "generation": cfg.generation.model_dump(mode="json"),
        "classifier": [cfg.classifier.name, classifier_options],
        "metrics": cfg.metrics.model_dump(mode="json"),
        "frames": [cfg.output.save_videos, cfg.output.save_gifs, cfg.output.gif_height],
    }
    fp = digest(ident)
    row_fps = {r.id: digest([fp, r.set, r.prompt, r.seed]) for r in rows}
    if len(row_fps) != len(rows):  # cannot happen: ids are set + index
        raise RuntimeError("duplicate row ids")
    return EvalPlan(cfg, Path(output_dir), rows, model_path, eraser_dir, fp, row_fps)


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
    )


def _row_payload(row, paired_on: str, has_eraser: bool) -> dict:
    d = row.as_dict()
    d["paired"] = has_eraser and (paired_on == "all" or (paired_on == "preserve" and row.set == "preserve"))
    d.setdefault("source", row.source)
    return d


def make_backend(spec: WorkerSpec, runtime, num_rows: int | None = None):
    """In-process (num_actors 0) or Ray actors (never more actors than rows to do)."""
    if runtime.num_actors == 0:
        return LocalBackend(spec, runtime.queue_depth)
    return RayBackend(spec, runtime, num_rows)


def run_eval(cfg, output_dir: str | Path, prompts: str | Path | None = None, limit: int | None = None, *,
             eraser: str | Path | None = None, mlflow_run_id: str | None = None,
             progress: bool | None = None) -> dict:
    """Run the evaluation stage; returns the summary dict (also written to `summary.json`).

    cfg: `eval.config.EvalConfig`. prompts: a CSV overriding `cfg.prompts.path`. limit: first N
    rows of each prompt set. eraser / mlflow_run_id: override `cfg.eraser` / `cfg.mlflow.run_id`.
    Reruns into the same `output_dir` skip finished rows.

    With `runtime.scorer: process` (the default) the scorer is a spawned process, which
    re-imports the main module: call run_eval from scripts under `if __name__ == "__main__":`.
    """
    from eval.classifiers.base import build_classifier
    from eval.metrics import aggregate
    from eval.report import finish_report
    from eval.writer import ResultStore, atomic_write_json

    t_start = time.perf_counter()
    plan = plan_eval(cfg, output_dir, prompts=prompts, limit=limit, eraser=eraser)
    out = plan.output_dir
    out.mkdir(parents=True, exist_ok=True)
    try:  # unknown plugin names/options fail here, before any model loads
        classifier = build_classifier(cfg.classifier.name, **cfg.classifier.factory_options())
    except (ValueError, TypeError, ImportError) as exc:
        raise ConfigError(f"classifier {cfg.classifier.name!r}: {exc}") from None
    store = ResultStore(out)
    _remove_stale_temp_files(out)
    done, stale = store.finished(plan.row_fingerprints)
    if stale:
        log.warning("%d row results in %s were made with other settings; recomputing them", stale, out)
    todo = [r for r in plan.rows if r.id not in done]
    atomic_write_json(out / "eval_config.json", {"fingerprint": plan.fingerprint, "config": cfg.to_dict(),
                                                  "model_path": str(plan.model_path),
                                                  "eraser": str(plan.eraser) if plan.eraser else None})

    mlf = None
    run_id = mlflow_run_id or cfg.mlflow.run_id
    if cfg.mlflow.tracking_uri:
        from eval.mlflow_log import EvalMlflowLogger

        mlf = EvalMlflowLogger(cfg.mlflow, run_id=run_id, output_dir=out)

    by_id = {r.id: r for r in plan.rows}
    mapped_cols = {cfg.prompts.prompt_column, cfg.prompts.seed_column, cfg.prompts.concept_column,
                   cfg.prompts.concept_type_column, cfg.preserve.prompt_column, cfg.preserve.seed_column,
                   cfg.preserve.concept_column, cfg.preserve.concept_type_column} - {None}
    show = cfg.runtime.progress if progress is None else progress
    workers_info: list[dict] = []
    t_gen = time.perf_counter()
    timing: dict[str, float] = {"setup_seconds": round(t_gen - t_start, 3)}
    try:
        if todo:
            from tqdm.auto import tqdm

            from pipelines.console import progress_stream

            bar = tqdm(total=len(plan.rows), initial=len(done), desc="eval rows", unit="row", disable=not show,
                       dynamic_ncols=True, file=progress_stream())

            def on_result(payload: dict, res: dict) -> None:
                row = by_id[payload["row_id"]]
                result = {
                    "id": row.id, "set": row.set, "index": row.index, "prompt": row.prompt, "seed": row.seed,
                    "concept": row.concept, "concept_type": row.concept_type, "source": row.source,
                    "fingerprint": plan.row_fingerprints[row.id], **res,
                    "fields": row.fields, "mapped_columns": sorted(mapped_cols),
                }
                store.write(result)
                done[row.id] = result
                bar.update(1)
                if mlf is not None:
                    mlf.log_row_async(result)

            try:
                t_backend = time.perf_counter()
                backend = make_backend(worker_spec(plan), cfg.runtime, len(todo))
                timing["worker_start_seconds"] = round(time.perf_counter() - t_backend, 3)
                workers_info = backend.workers_info
                payloads = [_row_payload(r, cfg.metrics.paired_on, plan.eraser is not None) for r in todo]
                try:
                    backend.run(payloads, on_result)
                except BaseException:
                    backend.close(abort=True)
                    raise
                backend.close()
            finally:
                bar.close()
        gen_wall = time.perf_counter() - t_gen
        t_report = time.perf_counter()
        results = [done[r.id] for r in plan.rows]
        metrics = aggregate(results, classifier)
        summary = _summary(plan, metrics, results, classifier, n_new=len(todo), n_resumed=len(plan.rows) - len(todo),
                           stale=stale, workers=workers_info, gen_wall=gen_wall)
        summary = finish_report(plan, results, summary)  # results.csv, grid, summary.json
        timing["report_seconds"] = round(time.perf_counter() - t_report, 3)
        summary["timing"] = timing
        summary["wall_seconds"] = round(time.perf_counter() - t_start, 3)
        if mlf is not None:
            summary["mlflow_run_id"] = mlf.run_id
            mlf.log_final(summary, results)
        atomic_write_json(out / "summary.json", summary)
        if mlf is not None:
            mlf.log_file(out / "summary.json")
            mlf.close()
            mlf = None
        return summary
    finally:
        classifier.close()
        if mlf is not None:
            mlf.close(failed=True)


def _remove_stale_temp_files(out: Path) -> None:
    """Half-written temporary files of a killed run (all our writes are temp file + rename)."""
    for sub in ("rows", VIDEOS_DIR, GIFS_DIR, "."):
        d = out / sub
        if d.is_dir():
            for p in d.iterdir():
                if p.is_file() and p.name.startswith("."):
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
