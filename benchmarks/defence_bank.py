"""Bank-then-erase (issue 25, defence 1, unlearn/adversarial_bank.py) on the toy CogVideoX world, attacked adaptively.

1. Trains the recipe (--recipe) with the `bank:` section of configs/banks/toy.yaml set on it, as `t2vu train`
   does (unlearn.trainer.train, unlearn.bank_training): the recipe eraser, then the rounds: each round the
   project's soft-prompt attack (0.5x, 180 steps x 2 restarts) against the CURRENT eraser from 8 of the recipe's
   (red prompt, anchor prompt) pairs, warm-started from the previous round's bank; then the recipe's loss + the
   unlearning loss on the bank + adversarial preservation of the anchors. Writes --banked (a training folder; its
   eraser's extra.bank: settings and rounds). Interrupted, it resumes at the next round.
2. Runs the attack benchmark (eval.attacks.runner, what `t2vu attack` runs) with the settings of
   benchmarks/defence_gate.py (the same rows, preserve rows and attack strengths) and two methods: the eraser alone
   and the banked eraser. White-box attacks optimise against the banked eraser itself (adaptive: the bank is part
   of the weights, there is nothing else to attack through).
3. Writes --results-file: the runner's figures, the bank's training record, each target met or missed.

    nice -n 5 python benchmarks/defence_bank.py --set prompts.limit=6    # what was run (see benchmarks/robustness.md)
    nice -n 5 python benchmarks/defence_bank.py --plan                   # cells still to do (resumes like t2vu attack)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(REPO / "configs" / "toy" / "recipe.yaml"), help="the training config")
    p.add_argument("--bank", default=str(REPO / "configs" / "banks" / "toy.yaml"), help="its `bank:` section")
    p.add_argument("--bank-set", dest="bank_overrides", action="append", default=[],
                   help="overrides of the training config after the section is set (e.g. bank.pairs=12)")
    p.add_argument("--eraser", default="runs/toy-red/eraser", help="the recipe eraser alone: the attacked baseline")
    p.add_argument("--banked", default="runs/toy-red-bank", help="the training folder (recipe eraser + bank)")
    p.add_argument("--output", default="runs/attack-toy-bank")
    p.add_argument("--results-file", default=str(REPO / "benchmarks" / "results" / "robustness_toy_bank.json"))
    p.add_argument("--set", dest="overrides", action="append", default=[], help="more attack-config overrides")
    p.add_argument("--retrain", action="store_true", help="train the bank again even when --banked has an eraser")
    p.add_argument("--plan", action="store_true", help="print the cells still to do and exit")
    args = p.parse_args(argv)

    import torch

    import json
    import logging

    from benchmarks.defence_common import attack_and_write
    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.train.bank import bank_section, soft_prompt_attack
    from unlearn.config import ConfigError
    from unlearn.eraser import read_eraser
    from unlearn.trainer import train

    banked = Path(args.banked) / "eraser"
    seconds_file = Path(args.banked) / "bank_seconds.txt"  # the training's wall time, for a later resume
    try:
        overrides = [f"bank={json.dumps(bank_section(args.bank))}", *args.bank_overrides]
        cfg = load_pipeline_config(args.recipe, overrides).method()
        if not args.plan and (args.retrain or not (banked / "eraser.safetensors").is_file()):
            print(f"recipe eraser + bank-then-erase -> {banked}", file=sys.stderr, flush=True)
            torch.set_num_threads(1)
            logging.getLogger("t2vu.bank").setLevel(logging.INFO)  # each round's attacks, on stderr
            logging.getLogger("t2vu.bank").addHandler(logging.StreamHandler(sys.stderr))
            t0 = time.perf_counter()
            train(cfg, args.banked, config_dir=Path(args.recipe).parent, progress=False, resume=not args.retrain,
                  bank_attack=soft_prompt_attack)
            seconds_file.write_text(f"{time.perf_counter() - t0:.1f}\n")
        trained = (banked / "eraser.safetensors").is_file()  # --plan before training: the eraser's cells only
        record = read_eraser(banked).meta.extra.get("bank", {}) if trained else {}
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    train_s = float(seconds_file.read_text()) if seconds_file.is_file() else None
    return attack_and_write(args, f"{{name: eraser, label: eraser-bank, eraser: {banked}}}" if trained else None,
                            {"bank_training": {k: record.get(k) for k in ("rounds", "final_losses")}},
                            {"bank": record.get("settings")}, {"bank_training_seconds": train_s})


if __name__ == "__main__":
    sys.exit(main())
