"""The `bank:` section (issue 25's bank-then-erase, `unlearn.adversarial_bank`): a key of the training config
(`unlearn.config.EraserTrainingConfig.bank`): after the eraser is trained, `rounds` of attack-then-train on the
training config's own loss plus the bank's (`unlearn.bank_training`), each round checkpointed; the settings and
the per-round record are saved in the eraser file (`extra.bank`). configs/banks/toy.yaml holds the toy's section.

Torch-free (config loading must not import torch). Every training path runs the rounds: `t2vu train` on its own
session, the Ray driver and each Tune trial on their published eraser, single-process (pipelines.train.post_training).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from unlearn.strict import Strict


class BankConfig(Strict):
    """The `bank:` section of a training config: how the adversarial bank is found, kept and trained on."""

    name: Literal["none", "bank"] = Field("bank", description=(
        "none: no bank (the eraser as trained). bank: bank-then-erase rounds (unlearn.adversarial_bank) after "
        "the eraser's training, on its own loss plus the bank's."))
    rounds: int = Field(3, ge=1, le=8, description="Attack-then-train rounds (issue 25: 3-4).")
    steps_per_round: int = Field(40, ge=1, description="Optimiser steps after each round's attacks.")
    lr: float | None = Field(None, gt=0, description="Learning rate of the fine-tune; null = train.lr.")
    pairs: int = Field(8, ge=1, description=(
        "(concept prompt, anchor prompt) pairs attacked each round: concept prompt i with anchor i mod K, in a "
        "seeded order; the same pairs every round (warm starts)."))
    budget: float = Field(0.5, gt=0, description=(
        "Soft-prompt budget in x ||E(concept) - E(anchor)|| (0.5: the target of issue 25)."))
    attack_steps: int = Field(180, ge=1, description="Adam steps of each restart (evaluation strength: 180).")
    restarts: int = Field(2, ge=1, description="Restarts per pair (restart 0 warm-started after round 1); all kept.")
    attack_lr: float = Field(0.05, gt=0, description="Adam learning rate of the attack.")
    attack_pool: int = Field(2, ge=1, description="Base-model concept trajectories the attack matches.")
    attack_batch: int = Field(4, ge=1, description="States per attack step.")
    trajectory_steps: int = Field(20, ge=2, description="Sampler steps of the attack's and the bank's trajectories.")
    guidance: float = Field(5.0, ge=1, description="CFG scale of those trajectories.")
    bank_xt: Literal["concept", "both"] = Field("both", description=(
        "x_t of bank rows: concept = the concept prompt's training states; both = those and the base model's "
        "trajectory under the attacked embedding."))
    batch: int = Field(4, ge=1, description="Bank rows per training step.")
    w_bank: float = Field(1.0, ge=0, description="Weight of the unlearning loss on the bank rows.")
    eta: float | None = Field(None, ge=0, description="Negative guidance of the bank target; null = loss.eta.")
    preserve_steps: int = Field(20, ge=0, description="PGD steps of each adversarial-preservation row (0: none).")
    preserve_max_concept: float = Field(0.25, description=(
        "A perturbed anchor is kept only if the base prediction moved less than this fraction of the way toward "
        "the concept prompt's (projection, averaged over its states)."))
    preserve_shrink: int = Field(0, ge=0, le=6, description=(
        "A refused perturbed anchor is tried again at half the length up to this many times (0: refused rows are "
        "dropped; the first toy run kept 2 of 24 at full length)."))
    preserve_batch: int = Field(4, ge=0, description="Adversarial-preservation rows per training step.")
    w_adv_preserve: float = Field(1.0, ge=0, description="Weight of the adversarial-preservation loss.")
    seed: int = Field(0, description="Seed of the pair order, trajectories, restarts and row sampling.")


def banked(cfg) -> bool:
    """Whether a training (or pipeline) config asks for the bank rounds (torch-free: the plan and the CLI read it)."""
    return cfg.bank is not None and cfg.bank.name != "none"
