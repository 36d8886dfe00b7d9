"""`t2vu make-tiny-model DIR`: a tiny random CogVideoX in the real diffusers layout."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("make-tiny-model", help="write a tiny random CogVideoX directory (diffusers layout)")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from unlearn.models.tiny import make_tiny_model

    path = make_tiny_model(args.dir, seed=args.seed, overwrite=args.overwrite)
    print(f"tiny CogVideoX written to {path} (load with CogVideoXPipeline.from_pretrained({str(path)!r}))")
    return 0
