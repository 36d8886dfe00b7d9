"""`t2vu make-tiny-model DIR [--family F] [--experts 2]`: a tiny random model of a registered family in the real
diffusers layout (`--family wan --experts 2`: a two-expert Wan laid out as Wan2.2-T2V-A14B)."""

from __future__ import annotations

from pipelines.cli.commands.common import Writes


def register(sub) -> None:
    from unlearn.models.families import base_family, family_names

    families = [f for f in family_names() if base_family(f) == f]
    p = sub.add_parser("make-tiny-model", help="write a tiny random model directory (diffusers layout)")
    p.add_argument("dir")
    p.add_argument("--family", choices=families, default="cogvideox",
                   help="model family (registry: unlearn/models/families.py); default cogvideox")
    p.add_argument("--experts", type=int, choices=(1, 2), default=1,
                   help="wan only: 2 writes transformer + transformer_2 and boundary_ratio (as Wan2.2-T2V-A14B)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the model an earlier make-tiny-model wrote to DIR (only its files; DIR holding "
                        "anything else is refused)")
    p.set_defaults(func=run, writes=Writes("make-tiny-model", dest="dir", flag="DIR", tool_outputs=True))


def run(args) -> int:
    from pathlib import Path

    from pipelines.runtime.run_folder import replace_outputs
    from unlearn.models.families import FAMILIES, expert_counts, spec_class, tiny_builder

    from unlearn.config import ConfigError

    family = getattr(args, "family", "cogvideox")
    experts = getattr(args, "experts", 1)
    if experts not in expert_counts(family):
        able = [f"{n} ({', '.join(map(str, e.experts))})" for n, e in FAMILIES.items() if len(e.experts) > 1]
        raise ConfigError(f"--experts {experts}: a {family} model has {' or '.join(map(str, expert_counts(family)))} "
                          f"expert(s); families with several: {', '.join(able)}. Choose one of those or drop --experts")
    extra = {"experts": experts} if experts != 1 else {}
    path = Path(args.dir)
    cls = spec_class(family).pipeline_class_name
    if (path / "model_index.json").exists() and not args.overwrite:
        print(f"{path} already holds a model; nothing written (--overwrite replaces one this command wrote)")
        return 0
    with replace_outputs(path, "make-tiny-model", overwrite=args.overwrite, flag="DIR") as new:
        tiny_builder(family)(new, seed=args.seed, **extra)
    print(f"tiny {family} model written to {path} (load with {cls}.from_pretrained({str(path)!r}))")
    return 0
