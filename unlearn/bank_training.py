"""Bank-then-erase as a step of eraser training: the training config's `bank:` key (`unlearn.bank_config`), the
rounds of `unlearn.adversarial_bank`, checkpointed round by round.

`train_with_bank(session, cfg, attack, out)` runs on a session whose erasers are trained; `bank_trained_eraser`
is the bank step of `unlearn.trainer.after_training`, which every training path takes once its eraser is published
(`t2vu train` on its own session; the Ray Train driver and each Tune trial on a session loaded from the published
eraser, `pipelines.train.post_training`); the caller injects the project's soft-prompt attack
(`pipelines.train.bank.soft_prompt_attack`: this layer may not import eval). Round k = attack the current eraser
(the bank grows) + `steps_per_round` optimiser steps; its checkpoint is written at step (k + 1) x steps_per_round:

    <out>/checkpoint/    the last finished round, replaced atomically: the loop's checkpoint (`unlearn.checkpoint`:
                         eraser weights with extra.bank, optimizer, step, curve) plus bank.pt (the bank's rows, the
                         warm starts, the round record, the row sampler's state), all under the one manifest
    <out>/eraser/        the banked eraser once every round finished (extra.bank: settings, rounds, final_losses)
    <out>/metrics.jsonl  the fine-tune's curve

A rerun resumes after the last finished round: rounds before it are neither attacked nor trained again (a round
killed midway is redone from its attack); a finished bank of the same settings is not redone at all; a checkpoint
of other settings is refused (one line). The optimizer is one AdamW across the rounds (its state is checkpointed).
bank.pt holds every row's x_t states (what the bank keeps in CPU memory anyway): rows x (4 + 1 with bank_xt: both)
x trajectory_steps latents, 587 KB for 12 rows on the tiny model, but ~4.5 MB a latent at CogVideoX-2B size.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from unlearn import checkpoint as ck
from unlearn.adversarial_bank import BANK_KEY, AdversarialBank, AttackFn, BankObjective, attack_round
from unlearn.bank_config import BankConfig, banked
from unlearn.errors import ConfigError
from unlearn.fsutil import atomic_copy_dir, atomic_torch_save
from unlearn.loop import LocalStore

LOG = logging.getLogger("t2vu.bank")
BANK_DIR = "bank"  # under a training run's output folder
STATE_FILE = "bank.pt"  # in a bank checkpoint, next to the loop's files
ROW_FIELDS = ("emb", "concept", "anchor", "states", "times", "round")


class BankStore(LocalStore):
    """A `LocalStore` whose checkpoint also holds the bank's state (bank.pt), listed in the same manifest."""

    def __init__(self, out: Path, *, resume: bool, state):
        super().__init__(out, resume=resume)
        self.state = state

    def save(self, step: int, write) -> None:
        def fill(folder: Path) -> dict:
            metrics = write(folder)
            atomic_torch_save(self.state(), folder / STATE_FILE)
            ck.write_manifest(folder, 0)  # again: now over bank.pt too
            return metrics

        super().save(step, fill)


def bank_state(bank: AdversarialBank, record: dict, gen: torch.Generator) -> dict:
    """What a round's checkpoint keeps of the bank (tensors, strings and ints: loads with weights_only)."""
    rows = {kind: {f: list(getattr(getattr(bank, kind), f)) for f in ROW_FIELDS} for kind in ("attacked", "preserve")}
    return {"rows": rows, "warm": [[c, a, d] for (c, a), d in bank.warm.items()], "record": json.dumps(record),
            "gen": gen.get_state()}


def restore_bank(path: Path, bank: AdversarialBank, gen: torch.Generator) -> dict:
    """Fill `bank` and `gen` from a checkpoint's bank.pt; returns its round record."""
    saved = torch.load(path, weights_only=True)
    for kind, rows in saved["rows"].items():
        for f in ROW_FIELDS:
            setattr(getattr(bank, kind), f, list(rows[f]))
    bank.warm = {(c, a): d for c, a, d in saved["warm"]}
    gen.set_state(saved["gen"])
    return json.loads(saved["record"])


def finished_bank(out: Path, settings: dict, rounds: int) -> dict | None:
    """The record of a finished bank in `out` with these settings (None: not finished, or other settings)."""
    from unlearn.eraser import read_eraser

    if not (out / ck.ERASER_DIR / "eraser_config.json").is_file():
        return None
    rec = read_eraser(out / ck.ERASER_DIR).meta.extra.get(BANK_KEY) or {}
    done = rec.get("settings") == settings and len(rec.get("rounds", [])) == rounds and "final_losses" in rec
    return rec if done else None


def train_with_bank(session, cfg: BankConfig, attack: AttackFn, out_dir, log=LOG.info, *, resume: bool = True) -> dict:
    """Rounds of attack -> train on the session's erasers (trained, or loaded by the caller), resumable round by
    round (module docstring); the eraser is written to out_dir/eraser with `extra.bank` = {settings, rounds,
    final_losses}. Returns that record, plus `seconds` (this call's wall time; not in the file)."""
    from unlearn.eraser import read_eraser, save_eraser
    from unlearn.loop import LoopPlan, TrainingLoop, torch_engine

    t0, out = time.perf_counter(), Path(out_dir)
    settings = cfg.model_dump(mode="json")
    if resume and (done := finished_bank(out, settings, cfg.rounds)) is not None:
        session.eraser_set.load_state_dict(read_eraser(out / ck.ERASER_DIR).state_dict())
        LocalStore(out).remove()  # killed between the export and the clean-up
        return {**done, "seconds": round(time.perf_counter() - t0, 1)}
    bank = AdversarialBank()
    objective = BankObjective(session.objective, bank, cfg, session)
    record = {"settings": settings, "rounds": []}
    store = BankStore(out, resume=resume, state=lambda: bank_state(bank, record, objective.gen))
    tc = session.cfg.train

    engine = torch_engine(tc, objective, lr=cfg.lr)  # the trainer's engine at the bank's learning rate
    spr = cfg.steps_per_round
    out.mkdir(parents=True, exist_ok=True)
    for rnd in range(cfg.rounds):
        end = (rnd + 1) * spr
        loop = TrainingLoop(session, engine, store, LoopPlan(end, tc.log_every, spr))
        start = loop.resume()  # the last finished round's weights and optimizer state
        if rnd == 0 and start:
            record = restore_bank(store.folder / STATE_FILE, bank, objective.gen)
            if record["settings"] != settings:
                raise ConfigError(f"{store.folder} is a bank checkpoint of other bank settings; use a new --output, "
                                  "or --no-resume to train the eraser and its bank again")
            log(f"bank: resuming after round {start // spr - 1} (step {start})")
        store.resume = True  # the next round starts where this one's checkpoint left off
        if start >= end:
            continue  # finished by an earlier run: neither attacked nor trained again
        record["rounds"].append(attack_round(session, bank, cfg, attack, rnd, log))
        session.eraser_set.meta.extra = {**session.eraser_set.meta.extra, BANK_KEY: record}
        loop.run()  # checkpoints at its last step: this round is finished
    store.finish()  # out/eraser + out/metrics.jsonl from the last round's checkpoint
    record["final_losses"] = loop.last
    session.eraser_set.meta.extra = {**session.eraser_set.meta.extra, BANK_KEY: record}
    save_eraser(session.eraser_set, out / ck.ERASER_DIR)  # the same weights, the record complete
    store.remove()
    return {**record, "seconds": round(time.perf_counter() - t0, 1)}


def bank_trained_eraser(cfg, out: str | Path, bank_attack, session, *, resume: bool = True) -> dict | None:
    """The training config's `bank:` step on the eraser published in out/eraser, with `session`'s erasers holding
    it: the rounds in out/bank (resumable), then the banked eraser published over out/eraser (atomically).
    `bank_attack(session, bank_cfg) -> attack`. Returns the summary's `bank` part; None without a bank."""
    if not banked(cfg):
        return None
    out = Path(out)
    record = train_with_bank(session, cfg.bank, bank_attack(session, cfg.bank), out / BANK_DIR, resume=resume)
    atomic_copy_dir(out / BANK_DIR / ck.ERASER_DIR, out / ck.ERASER_DIR)
    last = record["rounds"][-1]
    return {"rounds": len(record["rounds"]), "bank_rows": last["bank_rows"], "preserve_rows": last["preserve_rows"],
            "final": record["final_losses"], "seconds": record["seconds"]}
