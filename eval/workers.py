"""The generating side of an eval worker: one pipeline (and eraser) loaded once, videos out.

Why a module of its own: `EvalWorker` is the unit that runs either in the driver process
(`runtime.num_actors: 0`) or as a Ray actor (eval.backends); it needs only a picklable
`WorkerSpec`. The process environment (offline/telemetry variables) is inherited from
whoever started it: the driver, or the Ray runtime env of `pipelines.runtime.ray_session.ensure_ray`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.methods import METHODS
from eval.scoring import SCORER_DIED, Consumer, ScorerSpec, VideoJob

log = logging.getLogger(__name__)


@dataclass
class WorkerSpec:
    """What a worker needs (picklable: crosses into Ray actors)."""

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
    # eval.config.ChecksConfig.frame_checks(): the degenerate-video thresholds (eval.quality).
    checks: dict | None = None
    # eval.methods.MethodPlan.as_dict(): what makes the "erased" video. None = the eraser when set, else none.
    method: dict | None = None
    # The text-embedding cache root (unlearn.embedding_cache) when it holds every prompt of the eval, the negative
    # prompt and the method's own texts (`text_cache_root`): the pipeline loads no text encoder (T5-XXL: ~9 GB read
    # and held per worker) and generates from the cached embeddings. A method that runs the encoder itself (SAFREE:
    # eval.methods `needs_text_encoder`) loads it too, but the pipeline's own text side still comes from the cache.
    text_cache: str | None = None


def method_plan(spec: WorkerSpec) -> dict:
    return spec.method or ({"name": "eraser", "options": {"eraser": spec.eraser}} if spec.eraser else {"name": "none"})


POOL_FIELDS = ("model_path", "dtype", "device", "use_gpu", "generation", "torch_threads", "quiet")
# methods whose videos need no text encoder where the cache holds their texts (all but SAFREE; eval.methods)
TEXT_FREE_METHODS = tuple(name for name, m in METHODS.items() if not m.needs_text_encoder)


def pool_key(spec: WorkerSpec) -> str:
    """What a loaded pipeline depends on (not the method, eraser, scorer, checks or output folders, which a pooled
    worker swaps per eval): specs with one key can share a worker's pipeline."""
    from eval.writer import digest

    return digest({**{k: getattr(spec, k) for k in POOL_FIELDS}, "text_cache": spec.text_cache,
                   "text_encoder": loads_text_encoder(spec)}, n=16)


def loads_text_encoder(spec: WorkerSpec) -> bool:
    """Whether the worker's pipeline loads the text encoder: some text is not cached, or the method runs the encoder
    itself (SAFREE; eval.methods `needs_text_encoder`)."""
    return not spec.text_cache or METHODS[method_plan(spec)["name"]].needs_text_encoder


def open_text_cache(model_path: str, dtype: str, generation: dict, root: str):
    """The embedding cache the pipeline's own encoding would match: its text encoder, `dtype`, its max length."""
    from unlearn.embedding_cache import EmbeddingCache
    from unlearn.models.families import family_of_model_dir, spec_class

    family = family_of_model_dir(model_path)
    length = int(generation.get("max_sequence_length") or spec_class(family).text_len_of(model_path))
    return EmbeddingCache(root, model_path, length, dtype, family=family)


def text_cache_root(model_path: str, dtype: str, generation: dict, prompts: list[str]) -> str | None:
    """The default embedding cache's root when it holds every one of `prompts` (the rows' and the method's texts) and
    the negative prompt, else None (nothing is encoded here: the cache is filled by training or a search driver,
    `EmbeddingCache.fill`)."""
    from unlearn.models.registry import cache_root

    root = str(cache_root() / "embeddings")
    cache = open_text_cache(model_path, dtype, generation, root)
    return None if cache.missing([*prompts, generation.get("negative_prompt") or ""]) else root


def _quiet_libraries() -> None:
    """No per-prompt truncation warnings or loading bars from diffusers/transformers over our bar."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


def _save_npy_atomic(arr: np.ndarray, path: Path) -> None:
    from unlearn.fsutil import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


class EvalWorker:
    """One pipeline (and eraser) loaded once; generates rows and hands each finished video
    to its consumer, then moves on. The row's second video is the eval method's (eval.methods).

    Runs in the driver process (`num_actors: 0`) or as a Ray actor with
    `max_concurrency = queue_depth` (the same class). `process(row)` is called from up to
    `queue_depth` threads: one generates (under a lock) while the others wait for their
    row's scores.
    """

    def __init__(self, spec: WorkerSpec, transformer=None):
        """transformer: a loaded backbone to generate with (in-process only: a training worker's proxy
        eval); the eraser is attached to it for the rows and detached again by `close()`."""
        import torch

        from eval.config import GenerationConfig

        if spec.quiet:
            _quiet_libraries()
        from eval.generate import load_eval_pipeline, pick_device

        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        self.spec = spec
        from eval.config import ChecksConfig

        self.checks = spec.checks or ChecksConfig().frame_checks()
        # Start the consumer first: a scorer process spawns while the pipeline loads. A pooled worker serves several
        # evals (their own output folders): one consumer per scorer setting, an idle one closed when another starts.
        self.consumers: dict[str, Consumer] = {}
        self._inflight: dict[str, int] = {}
        self._consumers_lock = threading.Lock()
        self._consumer(spec, hold=False)
        self.gen = GenerationConfig.model_validate(spec.generation)
        self.device = pick_device(spec.device, spec.use_gpu)
        if transformer is not None:
            self.device = str(next(transformer.parameters()).device)
        root = spec.text_cache
        self.text = open_text_cache(spec.model_path, spec.dtype, spec.generation, root) if root else None
        self.pipe = load_eval_pipeline(spec.model_path, spec.dtype, self.device, self.gen, transformer=transformer,
                                       text_encoder=loads_text_encoder(spec))
        from eval.methods import build_method

        self.method = build_method(method_plan(spec))
        self.method.attach(self.pipe, spec.model_path, self.gen)
        self._gen_lock = threading.Lock()

    def set_method(self, spec: WorkerSpec) -> None:
        """Swap in `spec`'s method (another trial's eraser) on the loaded pipeline: no reload. The pipeline parts
        must be the same (`pool_key`); waits for the row being generated (the generation lock)."""
        if pool_key(spec) != pool_key(self.spec):
            raise ValueError("an eval worker's pipeline serves specs with its own pool_key only")
        with self._gen_lock:
            self._swap(spec)

    def _swap(self, spec: WorkerSpec) -> None:
        """Under the generation lock: `spec`'s method on the pipeline, its checks and base-video cache (nothing to do
        when they are already on)."""
        from eval.config import ChecksConfig
        from eval.methods import build_method

        if method_plan(spec) != method_plan(self.spec):
            self.method.detach()
            self.method = build_method(method_plan(spec))
            self.method.attach(self.pipe, spec.model_path, self.gen)
        self.checks = spec.checks or ChecksConfig().frame_checks()
        self.spec = spec

    def _consumer(self, spec: WorkerSpec, hold: bool = True) -> Consumer:
        """The consumer of `spec`'s scorer setting (started on first use; `hold`: one more row in flight on it).
        Starting one closes the consumers no row is in flight on (an earlier eval's, finished)."""
        from eval.writer import digest

        key = digest([asdict(spec.scorer), spec.scorer_mode, spec.scorer_nice])
        with self._consumers_lock:
            if key not in self.consumers:
                for old in [k for k, n in self._inflight.items() if n == 0]:
                    self.consumers.pop(old).close()
                    del self._inflight[old]
                self.consumers[key] = Consumer(spec.scorer, spec.scorer_mode, spec.scorer_nice)
                self._inflight[key] = 0
            self._inflight[key] += int(hold)
            return self.consumers[key]

    def _release(self, consumer: Consumer) -> None:
        with self._consumers_lock:
            for k, c in self.consumers.items():
                if c is consumer:
                    self._inflight[k] -= 1

    def ready(self) -> dict:
        import socket

        return {"pid": os.getpid(), "host": socket.gethostname(), "device": self.device,
                "text_encoder": self.pipe.text_encoder is not None}

    def peak_memory_gb(self) -> float | None:
        """This process's peak allocated GPU memory so far (`torch.cuda.max_memory_allocated`; None off
        CUDA). In a training worker's proxy eval it includes training's peak: what `t2vu plan` predicts."""
        import torch

        if not self.device.startswith("cuda"):
            return None
        return round(torch.cuda.max_memory_allocated(torch.device(self.device)) / 2**30, 3)

    def _generate(self, row: dict, text: dict | None = None) -> tuple[np.ndarray, dict]:
        """One video as uint8 frames, and its quality record checked on the float frames
        (NaN/inf are visible only before the uint8 conversion). text: the method's text side."""
        from eval.generate import generate_video, to_uint8
        from eval.quality import video_quality

        if self.text is not None:
            text = self._cached_text(row["prompt"], text)
        frames = generate_video(self.pipe, row["prompt"], row["seed"], self.gen, row.get("row_guidance"), text=text)
        quality = video_quality(frames, self.checks)
        if quality["nonfinite_values"]:  # a defined conversion (NaN -> 0) for the files and the classifier
            frames = np.nan_to_num(frames, nan=0.0, posinf=1.0, neginf=0.0)
        return to_uint8(frames), quality

    def _cached_text(self, prompt: str, text: dict | None) -> dict:
        """The call's text side with every text the pipeline would encode (the prompt or a method's replacement, the
        negative prompt or a method's) replaced by its cached embedding, as T5 makes it: no text encoder is needed."""
        call = {"prompt": prompt, "negative_prompt": self.gen.negative_prompt, **(text or {})}
        need = [k for k in ("prompt", "negative_prompt") if call.get(f"{k}_embeds") is None]
        if need:
            emb = self.text.get([call[k] or "" for k in need]).to(self.pipe.device, self.pipe.transformer.dtype)
            call.update({f"{k}_embeds": emb[i:i + 1] for i, k in enumerate(need)})
        return call

    def _video(self, row: dict, erased: bool) -> tuple[np.ndarray, dict]:
        from eval.quality import video_quality

        if erased:
            return self._generate(row, self.method.text_kwargs(row["prompt"]))
        cached = self._base_cache_path(row)
        if cached is not None and cached.is_file():
            try:
                frames = np.load(cached)
                return frames, video_quality(frames, self.checks)  # only finite videos are cached
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable cached base video %s: %s", cached, exc)
        with self.method.base_context():  # the base model: same pipeline, an eraser switched off
            frames, quality = self._generate(row)
        if cached is not None and not quality["nonfinite_values"]:
            _save_npy_atomic(frames, cached)
        return frames, quality

    def _base_cache_path(self, row: dict) -> Path | None:
        if not self.spec.base_cache_dir:
            return None
        from eval.writer import digest

        parts = [self.spec.model_path, self.spec.dtype, str(self.pipe.device.type), self.spec.generation,
                 row["prompt"], int(row["seed"])] + (["cached text embeddings"] if self.text is not None else [])
        if row.get("row_guidance") is not None:  # a per-row guidance column makes another video
            parts.append(float(row["row_guidance"]))
        key = digest(parts, n=24)
        return Path(self.spec.base_cache_dir) / f"{key}.npy"

    def process(self, row: dict, spec: WorkerSpec | None = None) -> dict:
        """Generate a row's base (and erased) video; each goes to the consumer as soon as it exists. spec: the eval
        the row belongs to (a pooled worker serves several: its method is swapped in first, under the same lock)."""
        futures: dict[str, Future] = {}
        quality: dict[str, dict] = {}
        with self._gen_lock:
            if spec is not None:
                self._swap(spec)
            consumer = self._consumer(self.spec)
            t0 = time.perf_counter()
            base, quality["base"] = self._video(row, erased=False)
            futures["base"] = consumer.submit(VideoJob(row, "base", base))
            erased, method_info = None, None
            if self.method.makes_video:
                erased, quality["erased"] = self._video(row, erased=True)
                method_info = self.method.row_info()
            gen_s = time.perf_counter() - t0
        if erased is not None:
            pair = base if row.get("paired") else None
            futures["erased"] = consumer.submit(VideoJob(row, "erased", erased, pair_with=pair))
        del base, erased
        try:
            parts = {which: fut.result() for which, fut in futures.items()}
        except BrokenProcessPool as exc:
            raise RuntimeError(SCORER_DIED) from exc
        finally:
            self._release(consumer)
        out = _row_output(parts, gen_s, quality)
        if method_info is not None:
            out["method"] = method_info
        return out

    def close(self) -> None:
        for c in self.consumers.values():
            c.close()
        self.detach()

    def detach(self) -> None:
        """Remove the method's hooks (idempotent): a shared backbone must leave the eval as it came."""
        self.method.detach()


def _row_output(parts: dict[str, dict], gen_s: float, quality: dict[str, dict]) -> dict:
    """The scores of a row's videos ({"base": ..., "erased": ...}) as one row result."""
    out: dict[str, Any] = {"files": {"base": None, "erased": None}, "records": {"base": None, "erased": None},
                           "quality": {"base": quality.get("base"), "erased": quality.get("erased")}}
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
