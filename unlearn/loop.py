"""The one training loop of an eraser, for one process or each of N workers.

    setup    the caller builds the `TrainingSession` (model, prompts, erasers, objective)
    resume   the store's last checkpoint -> eraser weights (always), step and curve; then the engine is
             made and, if it matches the checkpoint's, its optimizer state loaded (`unlearn.checkpoint`)
    loop     batch(step) -> engine forward / backward / step -> step hook
             every log_every:        the losses (mean over ranks) -> the curve (and the store's live log)
             every checkpoint_every, eval_every and at the last step: a checkpoint (collective) -> store
    result   `LoopResult`: timings, the last losses and checkpoint metrics; the caller writes its summary

Two small seams make it serve every launcher (the torchtune / LitGPT recipe shape):
- an engine: `TorchEngine` here (a torch AdamW, one process), or DeepSpeed ZeRO across Ray Train workers
  (`pipelines.train.engine.DeepSpeedEngine`);
- a checkpoint store: `LocalStore` here (<output>/checkpoint, replaced atomically, plus a live
  metrics.jsonl), or Ray Train checkpoint reporting (`pipelines.train.checkpoints.RayCheckpointStore`).
Plain PyTorch: nothing here imports Ray or DeepSpeed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from unlearn import checkpoint as ck
from unlearn.fsutil import atomic_replace_dir, atomic_torch_save, atomic_write_text
from unlearn.step import check_finite

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopPlan:
    steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int | None = None  # checkpoints that also ask `on_checkpoint` to evaluate (a search's proxy evals)


@dataclass(frozen=True)
class StepHook:
    """A test seam: `function(step, rank, **kwargs)` after every optimizer step (the tests kill a worker
    with one). The function travels as an object (pickled by reference: its module must be importable
    where it runs); a "module:function" string is refused, never imported (unlearn.plugins)."""

    function: Callable
    kwargs: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if not callable(self.function):
            raise TypeError(f"StepHook.function must be a callable (a function object), got {self.function!r}; "
                            "module:function strings are not imported")

    def __call__(self, step: int, rank: int) -> None:
        self.function(step, rank, **self.kwargs)


@dataclass(frozen=True)
class CheckpointEvent:
    """What `on_checkpoint` (rank 0, after the checkpoint is written, before the store commits it) sees."""
    folder: Path
    step: int
    history: list
    evaluate: bool


class Engine(Protocol):
    def state(self) -> dict: ...  # {"engine", "world_size", "zero_stage"}: what a checkpoint must match
    def forward(self, batch) -> dict: ...
    def backward(self, loss) -> None: ...
    def step(self) -> None: ...
    def mean(self, vec: torch.Tensor) -> torch.Tensor: ...  # mean over ranks (collective)
    def save(self, folder: Path, step: int) -> None: ...  # collective
    def load(self, folder: Path) -> None: ...
    def gathered(self, params) -> contextlib.AbstractContextManager: ...  # full parameters readable (collective)
    global_steps: int


class CheckpointStore(Protocol):
    def latest(self) -> contextlib.AbstractContextManager[Path | None]: ...
    def start(self, history: list[dict]) -> None: ...  # the curve so far, before the first step
    def log(self, row: dict) -> None: ...
    def save(self, step: int, write: Callable[[Path], dict]) -> None: ...  # collective


def make_optimizer(train, params, *, lr: float | None = None):
    """The eraser's optimizer, one construction for every engine and caller: AdamW at `train.lr` (or `lr`, the
    bank rounds' own rate) with `train.weight_decay`; `train` is a config's `train` section."""
    return torch.optim.AdamW(params, lr=lr or train.lr, weight_decay=train.weight_decay)


def torch_engine(train, objective, *, lr: float | None = None):
    """The single-process engine factory (`TrainingLoop` calls it with the trainable parameters)."""
    return lambda params: TorchEngine(objective, params, make_optimizer(train, params, lr=lr), grad_clip=train.grad_clip)


class TorchEngine:
    """One process: a torch optimizer on the eraser parameters (+ gradient clipping)."""

    def __init__(self, objective, params, optimizer, *, grad_clip: float | None):
        self.objective, self.params, self.optimizer, self.grad_clip = objective, list(params), optimizer, grad_clip
        self.global_steps = 0

    def state(self) -> dict:
        return {"engine": "torch", "world_size": 1, "zero_stage": None}

    def forward(self, batch) -> dict:
        return self.objective(batch)

    def backward(self, loss) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()

    def step(self) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.global_steps += 1

    def mean(self, vec):
        return vec

    def save(self, folder: Path, step: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"optimizer": self.optimizer.state_dict(), "global_steps": self.global_steps},
                          folder / "optimizer.pt")  # a full disk: an OSError naming the file, not torch's iostream error

    def load(self, folder: Path) -> None:
        saved = torch.load(Path(folder) / ck.ENGINE_DIR / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.global_steps = int(saved["global_steps"])

    def gathered(self, params):
        return contextlib.nullcontext()


class LocalStore:
    """<output>/checkpoint (the last one, replaced atomically) and a live <output>/metrics.jsonl."""

    def __init__(self, out: Path, *, resume: bool = True):
        self.out, self.resume = Path(out), resume
        self.folder = self.out / ck.CHECKPOINT_DIR

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        yield self.folder if self.resume and self.folder.is_dir() else None

    def start(self, history: list[dict]) -> None:
        atomic_write_text(self.out / ck.METRICS_FILE, ck.metrics_text(history))  # no duplicates after a resume

    def log(self, row: dict) -> None:
        with open(self.out / ck.METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    def save(self, step: int, write: Callable[[Path], dict]) -> None:
        atomic_replace_dir(self.folder, write)

    def finish(self) -> dict:
        """Publish eraser/ and metrics.jsonl from the last checkpoint, then drop it (the caller writes summary.json first)."""
        return ck.export(self.folder, self.out)

    def remove(self) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)


@dataclass
class LoopResult:
    start: int
    attempts: list[int]
    last: dict[str, float]  # the last logged losses (mean over ranks)
    metrics: dict  # the last checkpoint's metrics (with any evaluation)
    step_times: list[float]
    phase_s: tuple[float, float]  # seconds in forward+backward, in the optimizer step
    global_steps: int
    engine: dict

    @property
    def steps_run(self) -> int:
        return len(self.step_times)

    def steps_per_s(self) -> float:
        total = sum(self.step_times)
        return self.steps_run / total if total else 0.0


class TrainingLoop:
    """setup (the caller) -> `resume()` -> `run()`; `fit()` does both."""

    def __init__(self, session, make_engine: Callable[[list], Engine], store: CheckpointStore, plan: LoopPlan, *,
                 rank: int = 0, step_hook: StepHook | None = None,
                 on_checkpoint: Callable[[CheckpointEvent], dict] | None = None, progress: bool = False):
        self.session, self.make_engine, self.store, self.plan = session, make_engine, store, plan
        self.rank, self.step_hook, self.on_checkpoint, self.progress = rank, step_hook, on_checkpoint, progress
        self.engine: Engine | None = None

    def resume(self) -> int:
        """Restore from the store's last checkpoint (if any) and make the engine; returns the start step."""
        state, self.history = None, []
        with self.store.latest() as folder:
            state = ck.read_state(folder)
            if state is not None:
                ck.verify_manifest(folder)  # before anything is opened, let alone unpickled
                ck.restore_eraser(folder, self.session.eraser_set)  # before the engine partitions the weights
                self.history = ck.read_metrics(folder / ck.METRICS_FILE, upto_step=state["step"])
            self.engine = self.make_engine(self.session.trainable_parameters())
            if state is not None:
                if ck.same_engine(state, self.engine.state()):
                    self.engine.load(folder)
                elif self.rank == 0:
                    LOG.warning("Checkpoint of %s, now %s: eraser weights and step restored, optimizer state reset",
                                {k: state.get(k) for k in ck.ENGINE_KEYS}, self.engine.state())
        self.start = int(state["step"]) if state else 0
        self.attempts = (state or {}).get("attempts", []) + [self.start]
        self.last: dict[str, float] = {k: v for k, v in (self.history[-1] if self.history else {}).items() if k != "step"}
        self.metrics: dict = {}
        self.step_times: list[float] = []
        self.phase = [0.0, 0.0]
        return self.start

    def run(self) -> LoopResult:
        plan, start = self.plan, self.start
        self.store.start(self.history)
        from tqdm.auto import tqdm

        bar = tqdm(range(start, plan.steps), initial=start, total=plan.steps, desc="train", unit="step",
                   disable=not (self.progress and self.rank == 0))
        for step in bar:
            losses = self._step(step)
            done = step + 1
            if self.step_hook is not None:
                self.step_hook(done, self.rank)
            is_last = done == plan.steps
            if done % plan.log_every == 0 or is_last:
                self._log(done, losses)
                bar.set_postfix(loss=f"{self.last['loss']:.4g}")
            evaluate = bool(plan.eval_every) and done % plan.eval_every == 0 and not is_last
            if done % plan.checkpoint_every == 0 or is_last or evaluate:
                self._checkpoint(done, evaluate)
        if start >= plan.steps:  # restarted after the last checkpoint was written: write (report) it again
            self._checkpoint(plan.steps, evaluate=False)
        return LoopResult(start, self.attempts, self.last, self.metrics, self.step_times, tuple(self.phase),
                          int(self.engine.global_steps), self.engine.state())

    def fit(self) -> LoopResult:
        self.resume()
        return self.run()

    def _step(self, step: int) -> dict:
        t = time.perf_counter()
        losses = self.engine.forward(self.session.batch(step))
        check_finite(losses, step + 1)
        self.engine.backward(losses["loss"])  # ZeRO-2: gradient reduce-scatter happens here
        t_mid = time.perf_counter()
        self.engine.step()  # ZeRO: optimizer on this rank's shard + parameter all-gather
        losses["loss"].detach().float().item()  # waits for the device: the step time is the step's
        dt = time.perf_counter() - t
        self.phase[0] += t_mid - t
        self.phase[1] += dt - (t_mid - t)
        self.step_times.append(dt)
        return losses

    def _log(self, done: int, losses: dict) -> None:
        """Losses of the GLOBAL batch: mean over ranks (a small all-reduce, only at log points)."""
        keys = sorted(losses)
        vec = self.engine.mean(torch.stack([losses[k].detach().float() for k in keys]))
        self.last = dict(zip(keys, vec.tolist()))
        row = {"step": done, **self.last}
        self.history.append(row)
        if self.rank == 0:
            self.store.log(row)

    def _checkpoint(self, done: int, evaluate: bool) -> None:
        metrics = {"train_step": done, **self.last, "steps_per_s": _rate(self.step_times)}
        state = {"step": done, "attempts": self.attempts, "global_steps": int(self.engine.global_steps),
                 **self.engine.state()}

        def write(folder: Path) -> dict:
            ck.write_checkpoint(folder, self.engine, self.session, rank=self.rank, state=state, history=self.history)
            if self.rank == 0 and self.on_checkpoint is not None:
                metrics.update(self.on_checkpoint(CheckpointEvent(folder, done, list(self.history), evaluate)) or {})
            return metrics

        self.store.save(done, write)
        self.metrics = metrics


def _rate(times: list[float]) -> float:
    return len(times) / sum(times) if times and sum(times) > 0 else 0.0


def steady_rate(times: list[float]) -> float:
    """Steps per second without the first steps, which pay one-time costs (allocations, ZeRO buffers)."""
    skip = min(5, len(times) // 5)
    return _rate(times[skip:])
