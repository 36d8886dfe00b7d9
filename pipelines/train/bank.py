"""The attack of bank-then-erase (issue 25, defence 1): the training config's `bank:` key (unlearn.bank_config)
runs the rounds of `unlearn.adversarial_bank` after the eraser's training (unlearn.bank_training), with the
project's soft-prompt attack (`eval.attacks.softprompt`) injected from here (unlearn may not import eval):

    t2vu train --config C --output runs/x    # C with a `bank:` section (or --set 'bank={rounds: 3, pairs: 8}')
    from unlearn.eraser import load_eraser   # then, as every eraser (extra.bank: settings + per-round record):
    handle = load_eraser(pipe, "runs/x/eraser")

configs/banks/toy.yaml holds the toy's section; benchmarks/defence_bank.py sets it on configs/toy/recipe.yaml
(`bank_section`). The Ray paths (`t2vu train --distributed`, every Tune trial of `t2vu tune`/`run`) take the
same rounds on their published eraser (pipelines.train.post_training), and Tune may search bank.* keys.
"""

from __future__ import annotations

from pathlib import Path

from unlearn.bank_config import BankConfig


def bank_section(path) -> dict:
    """The `bank:` mapping of a bank file (configs/banks/*.yaml), to set as a training config's `bank` key;
    ConfigError (one line) when the file has none."""
    from unlearn.config import ConfigError, read_yaml

    raw = read_yaml(Path(path)) or {}
    if not isinstance(raw, dict) or not isinstance(raw.get("bank"), dict):
        raise ConfigError(f"{path}: no `bank:` section (a mapping of unlearn.bank_config.BankConfig keys)")
    return raw["bank"]


def soft_prompt_attack(session, cfg: BankConfig):
    """The bank's attack: `SoftPromptAttack.attack_pair` through the session's defended transformer, the base model
    being the session's erasers switched off; returns attack(concept, anchor, warm) -> ([R, L, D], info)."""
    from eval.attacks.softprompt import SoftPromptAttack
    from unlearn.adversarial_bank import SessionAttackContext

    ctx = SessionAttackContext(session)
    sp = SoftPromptAttack("bank", {"budget": cfg.budget, "steps": cfg.attack_steps, "restarts": cfg.restarts,
                                   "lr": cfg.attack_lr, "pool_size": cfg.attack_pool, "batch": cfg.attack_batch,
                                   "trajectory_steps": cfg.trajectory_steps, "guidance": cfg.guidance,
                                   "seed": cfg.seed})
    base = session.objective.handle.disabled
    return lambda concept, anchor, warm: sp.attack_pair(ctx, concept, anchor, base, None, warm)
