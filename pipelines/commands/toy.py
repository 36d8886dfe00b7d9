"""`t2vu toy ...`: the toy world (a tiny CogVideoX trained on procedural videos).

`t2vu toy build DIR` trains the toy model from scratch (~15 min on one CPU thread) and
writes it to DIR with its measured quality (`toy_quality.json`). The project ships a
built copy at `unlearn/assets/toy-model/` (`builtin:toy`), so this is only needed to
reproduce or change it.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("toy", help="toy world: build the tiny trained CogVideoX used by CPU demos and tests")
    toy_sub = p.add_subparsers(dest="toy_command", required=True, metavar="TOY_COMMAND")

    b = toy_sub.add_parser("build", help="train the toy model into DIR and measure its quality")
    b.add_argument("dir", help="output directory (replaced if it exists)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--vae-steps", type=int, default=None, help="upper bound on VAE steps (early-stops)")
    b.add_argument("--tf-steps", type=int, default=None, help="transformer training steps")
    b.add_argument("--eval-n", type=int, default=None, help="prompt/seed pairs per quality set (default 128)")
    b.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on small CPUs)")
    b.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from unlearn.toy.build import BuildConfig, build

    cfg = BuildConfig(seed=args.seed, threads=args.threads)
    if args.vae_steps is not None:
        cfg.vae_steps = args.vae_steps
    if args.tf_steps is not None:
        cfg.tf_steps = args.tf_steps
    if args.eval_n is not None:
        cfg.eval_n = args.eval_n
    quality = build(args.dir, cfg)
    print(json.dumps(quality["summary"]))
    return 0 if quality["summary"]["meets_bars"] else 1
