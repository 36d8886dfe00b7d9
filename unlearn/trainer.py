"""Single-process eraser training: `t2vu train --config C --output DIR`.

A nanoGPT-style loop around `ErasureObjective`. Output folder:
  config.yaml      resolved config
  metrics.jsonl    one JSON line per logged step (rewritten on resume: no duplicates)
  checkpoint/      last checkpoint (eraser files + optimizer.pt + state.json), atomic
  eraser/          final eraser.safetensors + eraser_config.json (written only on success)
  summary.json     final losses, steps, wall time
Rerunning a finished output does nothing; rerunning an interrupted one resumes
from the last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from unlearn.config import ConfigError, EraserTrainingConfig
from unlearn.eraser import read_eraser, save_eraser
from unlearn.fsutil import atomic_replace_dir, atomic_write_text
from unlearn.session import TrainingSession
from unlearn.step import check_finite


def read_metrics(path: Path, upto_step: int | None = None) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if upto_step is None or r["step"] <= upto_step:
            rows.append(r)
    return rows


def save_checkpoint(out: Path, session: TrainingSession, optimizer, step: int) -> None:
    def fill(tmp: Path) -> None:
        save_eraser(session.eraser_set, tmp / "eraser")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step}))

    atomic_replace_dir(out / "checkpoint", fill)


def load_checkpoint(out: Path, session: TrainingSession, optimizer) -> int:
    ck = out / "checkpoint"
    if not (ck / "state.json").exists():
        return 0
    saved = read_eraser(ck / "eraser")
    if saved.meta.config_digest != session.eraser_set.meta.config_digest:
        raise ConfigError(
            f"{ck} was written by a different config (digest {saved.meta.config_digest} vs "
            f"{session.eraser_set.meta.config_digest}); use a new --output or delete the folder"
        )
    session.eraser_set.load_state_dict(saved.state_dict())
    optimizer.load_state_dict(torch.load(ck / "optimizer.pt", weights_only=True))
    return int(json.loads((ck / "state.json").read_text())["step"])


def make_optimizer(cfg: EraserTrainingConfig, params):
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)


def train(cfg: EraserTrainingConfig, output: str | Path, *, config_dir=None, progress: bool = True, resume: bool = True) -> dict:
    out = Path(output)
    summary_path = out / "summary.json"
    if resume and summary_path.exists() and (out / "eraser" / "eraser_config.json").exists():
        return json.loads(summary_path.read_text())  # finished: nothing to redo (`t2vu train` pinned the config)

    t0 = time.time()
    session = TrainingSession(cfg, config_dir=config_dir)
    optimizer = make_optimizer(cfg, session.trainable_parameters())
    start = load_checkpoint(out, session, optimizer) if resume else 0
    # The folder is made only now, after the model, prompts and geometry loaded: bad input leaves nothing behind.
    out.mkdir(parents=True, exist_ok=True)
    # Written only after the resume check: a run that refuses to resume keeps the config it was made with.
    if not (out / "config.yaml").exists() or not resume:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    metrics_path = out / "metrics.jsonl"
    history = read_metrics(metrics_path, upto_step=start)
    atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in history))

    from tqdm.auto import tqdm

    tc = cfg.train
    bar = tqdm(range(start, tc.steps), initial=start, total=tc.steps, disable=not progress, desc="train", unit="step")
    last: dict = {}
    step_times: list[float] = []
    with open(metrics_path, "a") as mf:
        for step in bar:
            t_step = time.perf_counter()
            batch = session.batch(step)
            losses = session.objective(batch)
            check_finite(losses, step + 1)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(session.trainable_parameters(), tc.grad_clip)
            optimizer.step()
            done = step + 1
            last = {k: float(v.detach()) for k, v in losses.items()}  # float() waits for the device
            step_times.append(time.perf_counter() - t_step)
            if done % tc.log_every == 0 or done == tc.steps:
                mf.write(json.dumps({"step": done, **last}) + "\n")
                mf.flush()
                bar.set_postfix(loss=f"{last['loss']:.4g}")
            if done % tc.checkpoint_every == 0 and done < tc.steps:
                save_checkpoint(out, session, optimizer, done)
    save_eraser(session.eraser_set, out / "eraser")
    summary = {
        "steps": tc.steps,
        "resumed_from": start,
        "final": last,
        "wall_s": round(time.time() - t0, 3),
        "eraser": str(out / "eraser"),
        "trainable_params": session.eraser_set.num_parameters(),
        # steady step time (the first step pays one-time allocations) and the process's peak on a GPU
        "step_s": round(sum(step_times[1:]) / (len(step_times) - 1), 4) if len(step_times) > 1 else None,
        "peak_memory_gb": (round(torch.cuda.max_memory_allocated(session.device) / 2**30, 3)
                           if session.device.type == "cuda" else None),
    }
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    if (out / "checkpoint").exists():
        shutil.rmtree(out / "checkpoint")
    session.objective.detach()
    return summary
