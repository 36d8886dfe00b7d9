"""`t2vu toy ...`: the toy world (a tiny CogVideoX trained on procedural videos).

`t2vu toy build DIR` trains the toy model from scratch (~15 min on one CPU thread) and
writes it to DIR with its measured quality (`toy_quality.json`). The project ships a
built copy at `unlearn/assets/toy-model/` (`builtin:toy`), so this is only needed to
reproduce or change it.
"""

from __future__ import annotations

import argparse
import json

from pipelines.cli.commands.common import Writes, add_set


def register(sub: argparse._SubParsersAction) -> None:
    from toyworld.parts import PARTS  # the toy families (a plain table: no torch at CLI start-up)

    p = sub.add_parser("toy", help="toy world: build the tiny trained CogVideoX used by CPU demos and tests")
    toy_sub = p.add_subparsers(dest="toy_command", required=True, metavar="TOY_COMMAND")

    b = toy_sub.add_parser("build", help="train the toy model into DIR and measure its quality")
    b.add_argument("dir", help="output directory (a rerun replaces the files an earlier toy build wrote there; a "
                               "folder holding anything else is refused)")
    b.add_argument("--family", choices=tuple(PARTS), default="cogvideox",
                   help="model family of the toy model (its components: toyworld/parts.py; default cogvideox)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--vae-steps", type=int, default=None, help="upper bound on VAE steps (early-stops)")
    b.add_argument("--tf-steps", type=int, default=None, help="transformer training steps")
    b.add_argument("--eval-n", type=int, default=None, help="prompt/seed pairs per quality set (default 128)")
    b.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on small CPUs)")
    b.add_argument("--vae-from", default=None, metavar="BUILD_DIR",
                   help="take the VAE of an earlier build with the same seed/family/VAE settings (bit-identical)")
    b.set_defaults(func=_build, writes=Writes("toy build", dest="dir", flag="DIR", tool_outputs=True))
    q = toy_sub.add_parser("quality", help="re-measure a built toy model's quality (what toy_quality.json holds)",
                           description="Generate every toy benchmark set through the model's pipeline and score "
                           "it with the detector, as `t2vu toy build` does after training (toyworld.quality). "
                           "Prints the summary; writes nothing into the model.")
    q.add_argument("model", help="a toy model directory, builtin:toy or builtin:toy-wan")
    q.add_argument("--n", type=int, default=None, help="prompt/seed pairs per set (default 128, as the build)")
    q.add_argument("--results-file", default=None, metavar="PATH",
                   help="also write the figures with this command line, git sha, date and machine to PATH "
                   "(benchmarks/results/<name>.json, rendered into the docs by benchmarks/render_results.py)")
    q.set_defaults(func=_quality)
    register_benchmark(toy_sub)


def _build(args: argparse.Namespace) -> int:
    from pipelines.runtime.run_folder import replace_outputs
    from toyworld.build import BuildConfig, build

    cfg = BuildConfig.for_family(args.family, seed=args.seed, threads=args.threads, vae_from=args.vae_from)
    if args.vae_steps is not None:
        cfg.vae_steps = args.vae_steps
    if args.tf_steps is not None:
        cfg.tf_steps = args.tf_steps
    if args.eval_n is not None:
        cfg.eval_n = args.eval_n
    with replace_outputs(args.dir, "toy build", overwrite=True, flag="DIR") as new:  # checked before the build
        quality = build(new, cfg)
    print(json.dumps(quality["summary"]))
    return 0 if quality["summary"]["meets_bars"] else 1


def _quality(args: argparse.Namespace) -> int:
    from toyworld import world
    from toyworld.quality import QUALITY_BARS, measure_dir
    from unlearn.errors import ConfigError
    from unlearn.models.registry import resolve_model_path

    n = world.FULL_SET_SIZE if args.n is None else args.n
    if n < 1:
        raise ConfigError(f"--n {n}: must be at least 1 prompt/seed pair per set")
    if args.results_file and not args.results_file.endswith(".json"):  # before minutes of generation
        raise ConfigError(f"--results-file {args.results_file}: must end in .json (benchmarks/results/<name>.json)")
    quality = measure_dir(resolve_model_path(args.model), n, write=False)
    if args.results_file:
        from pipelines.runtime.results_file import write_results

        gen = dict(quality["generation"])
        seconds = gen.pop("seconds", None)
        write_results(args.results_file, {"summary": quality["summary"], "sets": quality["sets"]},
                      argv=getattr(args, "argv", None), timings={"generation_s": seconds},
                      settings={"model": args.model, "n": n, "generation": gen, "bars": QUALITY_BARS})
    print(json.dumps(quality["summary"]))
    return 0 if quality["summary"]["meets_bars"] else 1


# ----------------------------------------------------------------------------- benchmark
def register_benchmark(toy_sub) -> None:
    from pipelines.toy.benchmark import VARIANTS

    bm = toy_sub.add_parser(
        "benchmark",
        help="train erasers for 'red' on the toy model (real trainer) and score them (real eval stage)",
        description="Train one eraser per variant (configs/toy/recipe.yaml + one changed factor), evaluate "
        "base and erased on the same seeds with the toy detector, write table.md/table.csv/results.json in "
        "--output and print the default recipe's headline metrics as the last line (JSON). Reruns skip "
        "finished variants. Variants: " + ", ".join(f"{k} ({v.description})" for k, v in VARIANTS.items()),
    )
    bm.add_argument("--output", required=True, help="benchmark folder (resumable)")
    bm.add_argument("--variants", default=None, help="comma-separated subset (default: all)")
    bm.add_argument("--n", type=int, default=64, help="videos per set for the comparison variants (default 64)")
    bm.add_argument("--n-default", type=int, default=128, help="videos per set for the default recipe (default 128)")
    bm.add_argument("--model", default=None, help="model directory instead of the recipe's builtin:toy; a Wan "
                    "model (builtin:toy-wan) runs configs/toy/recipe-wan.yaml + configs/eval/toy-wan.yaml")
    bm.add_argument("--steps", type=int, default=None, help="train.steps of the default recipe (default: recipe)")
    bm.add_argument("--table-steps", type=int, default=None, help="train.steps of the other variants (default: --steps)")
    add_set(bm, help="override a training-config value of every variant, e.g. --set "
            "train.trajectory.pool_size=2 (YAML-parsed value; the benchmark folder pins it)")
    bm.add_argument("--rows-seed", type=int, default=0, metavar="SEED",
                    help="seed of the eval rows (toyworld.world.eval_rows; default 0, the rows the recipes were "
                    "chosen on): another seed measures a recipe on fresh prompts and generation seeds")
    bm.add_argument("--progress", action="store_true", help="progress bars")
    bm.add_argument("--results-file", default=None, metavar="PATH",
                    help="also write the figures with this command line, git sha, date and machine to PATH "
                    "(benchmarks/results/<name>.json: the docs' tables are rendered from these files by "
                    "benchmarks/render_results.py)")
    bm.set_defaults(func=_benchmark, writes=Writes("toy benchmark"))


def _benchmark(args: argparse.Namespace) -> int:
    from pipelines.toy.benchmark import run_benchmark
    from pipelines.toy.tables import headline
    from unlearn.config import parse_override

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    overrides = dict(parse_override(i) for i in args.overrides)
    res = run_benchmark(args.output, variants, n=args.n, n_default=args.n_default, model=args.model,
                        steps=args.steps, table_steps=args.table_steps, progress=args.progress,
                        overrides=overrides or None, rows_seed=args.rows_seed)
    if args.results_file:
        _write_results_file(args, res, variants)
    line = headline(res["default"]) if res["default"] else {"variants": [r["variant"] for r in res["variants"]]}
    print(json.dumps(line))
    return 0


def _write_results_file(args: argparse.Namespace, res: dict, variants: list[str] | None) -> None:
    from pipelines.runtime.results_file import REPO, write_results
    from unlearn.config import parse_override
    from pipelines.toy.benchmark import RECIPES, model_family
    from pipelines.toy.tables import results_figures, results_timings

    recipe, eval_config = (p.relative_to(REPO).as_posix() if p.is_relative_to(REPO) else str(p)
                           for p in RECIPES[model_family(args.model)])
    settings = {"model": args.model or "builtin:toy", "recipe": recipe, "eval_config": eval_config,
                "variants": variants or "all", "n": args.n, "n_default": args.n_default, "steps": args.steps,
                "table_steps": args.table_steps, "rows_seed": args.rows_seed, "overrides": dict(parse_override(i) for i in args.overrides)}
    write_results(args.results_file, results_figures(res), argv=getattr(args, "argv", None), settings=settings,
                  timings=results_timings(res))
