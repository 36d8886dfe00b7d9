"""`t2vu make-tiny-model DIR [--family F]`: a tiny random model of a registered family in the real diffusers layout."""

from __future__ import annotations


def register(sub) -> None:
    from unlearn.models.families import base_family, family_names

    families = [f for f in family_names() if base_family(f) == f]
    p = sub.add_parser("make-tiny-model", help="write a tiny random model directory (diffusers layout)")
    p.add_argument("dir")
    p.add_argument("--family", choices=families, default="cogvideox",
                   help="model family (registry: unlearn/models/families.py); default cogvideox")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from unlearn.models.families import spec_class, tiny_builder

    family = getattr(args, "family", "cogvideox")
    path = tiny_builder(family)(args.dir, seed=args.seed, overwrite=args.overwrite)
    cls = spec_class(family).pipeline_class_name
    print(f"tiny {family} model written to {path} (load with {cls}.from_pretrained({str(path)!r}))")
    return 0
