"""Single-process eraser training: `t2vu train --config C --output DIR`.

The one loop (`unlearn.loop.TrainingLoop`) with a plain PyTorch engine and a local checkpoint store.
Output folder:
  config.yaml      resolved config
  metrics.jsonl    one JSON line per logged step (rewritten on resume: no duplicates)
  checkpoint/      last checkpoint, replaced atomically (the layout of `unlearn.checkpoint`, the same as a
                   distributed run's), removed once the run finished
  eraser/          final eraser.safetensors + eraser_config.json (written only on success)
  bank/            with a `bank:` key: its rounds' checkpoint while they run, then the banked eraser (copied to
                   eraser/) and its curve (unlearn.bank_training)
  summary.json     final losses, steps, wall time
Rerunning a finished output does nothing; rerunning an interrupted one resumes from the last
checkpoint (also one a distributed run wrote, copied into checkpoint/: weights, step and curve), and a run
stopped in its bank rounds resumes at the next round. After the training: the `bank:` rounds (they need an
attack: `bank_attack(session, bank_cfg) -> attack`, from a layer that may import eval), then the `gate:` probe.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import yaml

from unlearn.checkpoint import read_metrics  # noqa: F401 - the trainer's curve reader (plots, tests)
from unlearn.config import ConfigError, EraserTrainingConfig
from unlearn.fsutil import atomic_write_text
from unlearn.bank_config import banked
from unlearn.bank_training import bank_trained_eraser
from unlearn.gate_training import gate_trained_eraser
from unlearn.loop import LocalStore, LoopPlan, TrainingLoop, torch_engine
from unlearn.session import TrainingSession


def finished(out: Path) -> bool:
    return (out / "summary.json").is_file() and (out / "eraser" / "eraser_config.json").is_file()


def train(cfg: EraserTrainingConfig, output: str | Path, *, config_dir=None, progress: bool = True, resume: bool = True,
          bank_attack=None) -> dict:
    out = Path(output)
    summary_path = out / "summary.json"
    if resume and finished(out):
        return json.loads(summary_path.read_text())  # finished: nothing to redo (`t2vu train` pinned the config)
    if banked(cfg) and bank_attack is None:  # before anything trains
        raise ConfigError("bank.name: bank needs an attack: train with t2vu train (or pass bank_attack="
                          "pipelines.train.bank.soft_prompt_attack)")

    t0 = time.time()
    session = TrainingSession(cfg, config_dir=config_dir)
    store = LocalStore(out, resume=resume)
    tc = cfg.train
    loop = TrainingLoop(session, torch_engine(cfg.train, session.objective), store,
                        LoopPlan(tc.steps, tc.log_every, tc.checkpoint_every), progress=progress)
    start = loop.resume()  # a checkpoint of another config is refused here, before anything is written
    # The folder is made only now, after the model, prompts and geometry loaded: bad input leaves nothing behind.
    out.mkdir(parents=True, exist_ok=True)
    # Written only after the resume check: a run that refuses to resume keeps the config it was made with.
    if not (out / "config.yaml").exists() or not resume:
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    result = loop.run()
    store.finish()
    after = after_training(cfg, out, bank_attack, session=session, config_dir=config_dir, resume=resume)
    times = result.step_times
    summary = {
        "steps": tc.steps,
        "resumed_from": start,
        "attempts": result.attempts,
        "final": result.last,
        "wall_s": round(time.time() - t0, 3),
        "eraser": str(out / "eraser"),
        "trainable_params": session.eraser_set.num_parameters(),
        # steady step time (the first step pays one-time allocations) and the process's peak on a GPU
        "step_s": round(sum(times[1:]) / (len(times) - 1), 4) if len(times) > 1 else None,
        "peak_memory_gb": (round(torch.cuda.max_memory_allocated(session.device) / 2**30, 3)
                           if session.device.type == "cuda" else None),
        **after,
    }
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    store.remove()
    return summary


def after_training(cfg: EraserTrainingConfig, out: str | Path, bank_attack, *, session=None, config_dir=None,
                   resume: bool = True) -> dict:
    """The steps every training path takes once its eraser is published in out/eraser: the `bank:` rounds, then the
    `gate:` probe on the base model (erasers detached). `session`: the trainer's, its erasers trained; None (the Ray
    driver, a Tune trial: pipelines.train.post_training): one session is built here for the bank and its backbone
    serves the gate too, so the model loads once. Returns the summary's parts: {bank, gate} (each only when set)."""
    from unlearn.eraser import read_eraser

    out = Path(out)
    if session is None and banked(cfg):
        session = TrainingSession(cfg, config_dir=config_dir)
        session.eraser_set.load_state_dict(read_eraser(out / "eraser").state_dict())
    bank = bank_trained_eraser(cfg, out, bank_attack, session, resume=resume) if session is not None else None
    if session is not None:
        session.objective.detach()  # the base model again: a `gate:` probe learns from it (unlearn.gate_training)
    gate = gate_trained_eraser(cfg, out / "eraser", config_dir, spec=session.spec if session is not None else None)
    gate = gate and {k: v for k, v in gate.items() if k != "config"}  # the config is in the eraser file
    return {k: v for k, v in (("bank", bank), ("gate", gate)) if v}
