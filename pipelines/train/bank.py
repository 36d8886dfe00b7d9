"""Bank-then-erase from a `bank:` file (issue 25, defence 1): the rounds of `unlearn.adversarial_bank`, with the
project's soft-prompt attack (`eval.attacks.softprompt`) as the attack, started from a trained eraser.

    from pipelines.train.bank import load_bank_config, train_bank
    cfg, recipe = load_bank_config("configs/banks/toy.yaml")
    record = train_bank(cfg, recipe, "runs/toy-red/eraser", "runs/toy-red-bank")
    # -> runs/toy-red-bank/eraser (extra.bank: settings + per-round record); load_eraser(pipe, that) as usual
"""

from __future__ import annotations

from pathlib import Path

from unlearn.adversarial_bank import BankConfig


def load_bank_config(path, overrides: list[str] | None = None) -> tuple[BankConfig, Path]:
    """(the `bank:` section, the resolved recipe path); bad input: one ConfigError line naming file and field."""
    from pydantic import ValidationError

    from unlearn.config import ConfigError, apply_overrides, read_yaml

    path = Path(path)
    raw = apply_overrides(read_yaml(path) or {}, overrides)
    try:
        cfg = BankConfig(**(raw.get("bank") or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(map(str, err["loc"])) or "<section>"
        raise ConfigError(f"{path}: bank.{where}: {err['msg']}") from None
    if cfg.name == "none":
        raise ConfigError(f"{path}: bank.name none trains nothing; set bank.name: bank")
    recipe = (path.parent / cfg.recipe).resolve()
    if not recipe.is_file():
        raise ConfigError(f"{path}: bank.recipe {cfg.recipe!r} is not a file (relative to {path.parent})")
    return cfg, recipe


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


def train_bank(cfg: BankConfig, recipe: Path, eraser_dir, out_dir, log=print) -> dict:
    """The recipe's session, its erasers loaded from eraser_dir, the bank rounds; writes out_dir/eraser."""
    from pipelines.config.pipeline import load_pipeline_config
    from unlearn.adversarial_bank import train_with_bank
    from unlearn.eraser import read_eraser
    from unlearn.session import TrainingSession

    session = TrainingSession(load_pipeline_config(recipe).method(), config_dir=recipe.parent)
    session.eraser_set.load_state_dict(read_eraser(eraser_dir).state_dict())
    try:
        return train_with_bank(session, cfg, soft_prompt_attack(session, cfg), out_dir, log)
    finally:
        session.objective.detach()
