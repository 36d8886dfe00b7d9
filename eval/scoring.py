"""The scoring side of an eval worker: one finished video in -> files, classifier record, metrics out.

Why a module of its own: scoring runs in a different place from generation (a spawned child
process by default, so it shares no GIL with the pipeline), and everything that crosses into
that process (ScorerSpec, VideoJob) must be picklable and importable without the generator.

    consumer = Consumer(spec, "process")      # or "thread" / "inline"
    fut = consumer.submit(VideoJob(row, "erased", frames, pair_with=base))
    fut.result()  # {"files", "record", "clip_score"?, "psnr"?, "ssim"?, "seconds"}
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

VIDEOS_DIR, GIFS_DIR = "videos", "gifs"

SCORER_DIED = (
    "the scorer process died. If run_eval is called from a script, put the call under "
    "`if __name__ == '__main__':` (the scorer process is spawned and re-imports the main module), "
    "or set runtime.scorer: thread"
)


@dataclass
class ScorerSpec:
    """What a scorer needs (picklable: crosses into Ray actors and scorer processes)."""

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
class VideoJob:
    """One finished video handed to the consumer."""

    row: dict  # PromptRow.as_dict() + "paired": bool
    which: str  # "base" | "erased"
    frames: np.ndarray  # uint8 [F, H, W, 3]
    # The base video of the same row, for paired PSNR/SSIM (erased jobs of paired rows only).
    pair_with: np.ndarray | None = None


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


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


# --- the scorer process (spawned: it inherits this process's environment, offline settings included) ---

_PROCESS_SCORER: Scorer | None = None


def _exit_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """A scorer process must not outlive the eval that started it (a SIGKILLed `t2vu eval` left it, and
    multiprocessing's resource tracker, alive for minutes). Poll the parent pid: once it is gone the
    process is reparented, and it exits; the tracker then sees its last pipe close and exits too.
    (PR_SET_PDEATHSIG would fire when the *thread* that spawned us ends, which a pool thread may do.)"""
    import threading

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(poll_s)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _scorer_process_init(spec: ScorerSpec, nice: int = 0, parent_pid: int | None = None) -> None:
    global _PROCESS_SCORER
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
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
    """An already-finished Future (inline scoring), so callers handle every mode alike."""

    def __init__(self, fn, *args):
        super().__init__()
        try:
            self.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered through .result()
            self.set_exception(exc)


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
                                             initializer=_scorer_process_init, initargs=(spec, nice, os.getpid()))
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
