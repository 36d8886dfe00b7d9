"""The toy erasure benchmark: train erasers for "red" with the real trainer, score them with
the real evaluation stage, and compare the design choices the method leaves open.

    t2vu toy benchmark --output runs/toy-bench                      # every variant
    t2vu toy benchmark --output runs/toy-bench --variants default   # the shipped recipe only
    t2vu toy benchmark --output runs/toy-bench --variants default \
        --results-file benchmarks/results/toy_benchmark.json        # + the figures the docs render

Per variant: `unlearn.trainer.train` (the recipe `configs/toy/recipe.yaml` plus the
variant's overrides) -> `eval.runner.run_eval` (`configs/eval/toy.yaml`: CogVideoXPipeline,
base and erased on identical seeds, the exact toy detector); a Wan `--model` (builtin:toy-wan)
runs `RECIPES["wan"]` plus its family's variants (attn1, anchors, cogrecipe). The base model's videos are
generated once (`runtime.base_cache_dir`) and reused by every variant. Output folder:

  prompts/{main,nontarget}_<n>.csv   the toy eval sets (`toyworld.world.eval_rows`);
                                     smaller sizes are prefixes of the default's sets
  base_cache/                        base-model frames, shared by all variants
  variants/<name>/variant.json       the resolved training config + eval size of the variant
  variants/<name>/train/             trainer output (eraser/, metrics.jsonl, summary.json)
  variants/<name>/eval/              eval output (rows/, results.csv, summary.json)
  results.json, table.md, table.csv  the comparison
  (--results-file PATH)              the figures with their provenance (`pipelines.runtime.results_file`),
                                     e.g. benchmarks/results/toy_benchmark.json, the docs' tables' source

Resumable: a variant whose eraser and eval summary exist is not redone; an interrupted one
continues (the trainer resumes from its checkpoint, the eval skips finished rows).

Sets (see `toyworld.world.EVAL_SETS`): target ("a red ..."), synonym (crimson/scarlet,
never in eraser training), two_target / two_nontarget (two-object scenes with / without red)
go into the main CSV; nontarget (other colours, all their words) is the eval's preserve
set, so its paired PSNR is `psnr_nontarget`.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

from unlearn.fsutil import atomic_write_text, finished_files
from toyworld import world
from pipelines.runtime.paths import project_root
from pipelines.toy.tables import write_table

REPO = project_root()  # the checkout, or $T2VU_HOME in the image (pipelines.runtime.paths)
RECIPE = REPO / "configs" / "toy" / "recipe.yaml"
EVAL_CONFIG = REPO / "configs" / "eval" / "toy.yaml"
RECIPES = {"cogvideox": (RECIPE, EVAL_CONFIG),  # (recipe, eval config) per family of the benchmarked model
           "wan": (REPO / "configs" / "toy" / "recipe-wan.yaml", REPO / "configs" / "eval" / "toy-wan.yaml")}

MAIN_SETS = ("target", "synonym", "two_target", "two_nontarget")


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    overrides: dict = field(default_factory=dict)  # dotted EraserTrainingConfig keys
    keep_prompt: Callable[[str], bool] | None = None  # filter on the recipe's concept.prompts
    families: tuple[str, ...] = ("cogvideox", "wan")  # model families the variant applies to
    add_preserve: tuple[str, ...] = ()  # appended to the recipe's concept.preserve (those not there already)


def _single_object(prompt: str) -> bool:
    return " and " not in prompt


def _other_colour_synonyms(target: str = "red") -> tuple[str, ...]:
    """Single-object prompts naming the other colours by their synonyms (emerald, azure, ...): the eval's
    non-target set holds them, the CogVideoX recipe's preservation set held only the plain words."""
    from itertools import product

    return tuple(world.prompt(world.Scene((world.Obj(c, s),), m), (w,))
                 for c in world.COLOUR_NAMES if c != target for w in world.SYNONYMS[c][1:]
                 for s, m in product(world.SHAPES, world.MOTIONS))


PAIRED = {"concept.reference": "paired", "concept.prompts_file": "paired_anchors.csv", "concept.prompts": []}


# One factor at a time around the default recipe (configs/toy/recipe.yaml).
VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("default", "the family's shipped recipe (configs/toy/recipe.yaml; Wan: recipe-wan.yaml)"),
        Variant("empty", "reference: empty prompt (the paper's)", {"concept.reference": "empty"}),
        Variant("noise", "x_t source: noise (instead of trajectory)", {"train.xt_source": "noise"}),
        Variant("eta1", "eta = 1", {"loss.eta": 1.0}),
        Variant("eta2", "eta = 2", {"loss.eta": 2.0}),
        Variant("eta7", "eta = 7", {"loss.eta": 7.0}),
        Variant("single", "concept prompts: single red objects only (no 2-object scenes)", keep_prompt=_single_object),
        # One anchor per prompt: the mean of four colours is a colour the model never drew (faint, broken objects).
        Variant("paired", "reference: one other colour per prompt (configs/toy/paired_anchors.csv)", PAIRED),
        # What the toy Wan recipe learned, tried on the CogVideoX toy (issue 25)
        Variant("presyn", "preservation also on the other colours' synonyms (emerald, azure, golden, violet)",
                add_preserve=_other_colour_synonyms(), families=("cogvideox",)),
        Variant("paired_presyn", "paired reference + preservation on the other colours' synonyms", PAIRED,
                add_preserve=_other_colour_synonyms(), families=("cogvideox",)),
        Variant("noloc", "no localization loss (w_localize 0)", {"loss.w_localize": 0.0}),
        Variant("nopreserve", "no preservation loss (w_preserve 0, no preserved prompts)",
                {"loss.w_preserve": 0.0, "train.preserve_batch_size": 0}),
        Variant("attn1", "placement: eraser after self-attention attn1 (instead of cross-attention attn2)",
                {"model.family": "wan-attn1"}, families=("wan",)),
        Variant("anchors", "reference: mean of the four other colours (instead of one per prompt)",
                {"concept.reference": "anchors", "concept.prompts_file": None}, families=("wan",)),
        # paired_anchors.csv's anchor follows the motion (left green, right blue, up yellow, down purple)
        Variant("balanced", "reference: one other colour per prompt, balanced over shape x motion",
                {"concept.prompts_file": "paired_anchors_balanced.csv"}, families=("wan",)),
        Variant("cogrecipe", "the CogVideoX recipe unchanged: anchors' mean, eta 3, lr 1e-3, 200 steps",
                {"concept.reference": "anchors", "concept.prompts_file": None, "loss.eta": 3.0, "train.lr": 1e-3,
                 "train.steps": 200, "loss.w_preserve": 1.0}, families=("wan",)),
    ]
}

# The targets for the shipped default (relative to base where so stated).
TARGETS = {
    "target_rate_base": (">=", 0.9, None),
    "target_rate_erased": ("<=", 0.05, "target_rate_base"),
    "synonym_rate_erased": ("<=", 0.1, "synonym_rate_base"),
    "nontarget_acc_erased": (">=", 0.98, "nontarget_acc_base"),
    "shape_acc_erased": (">=", 0.9, "shape_acc_base"),
    "target_content_kept": (">=", 0.8, None),
    "second_object_kept": (">=", 0.95, None),
}


def _log(msg: str) -> None:
    """A progress line through the one console (stderr, or the terminal while library output is redirected):
    stdout stays the table and the results."""
    from pipelines.runtime.console import progress

    progress(f"[toy-bench {time.strftime('%H:%M:%S')}] {msg}")


# ----------------------------------------------------------------------------- configs
def method_config(variant: Variant, *, model: str | None = None, steps: int | None = None,
                  recipe: str | Path = RECIPE, extra: dict | None = None, workdir: Path | None = None):
    """The recipe with the variant's (and the caller's) overrides, validated.

    workdir: where a variant that filters the prompts of a recipe's prompts_file writes the filtered CSV
    (default: a new temporary folder)."""
    from unlearn.config import EraserTrainingConfig, apply_overrides, read_yaml, set_by_path, validate

    data = apply_overrides(copy.deepcopy(read_yaml(recipe)), {**variant.overrides, **(extra or {})})
    if variant.add_preserve:
        have = data["concept"].setdefault("preserve", [])
        have += [p for p in variant.add_preserve if p not in have]
    pfile = data["concept"].get("prompts_file")
    if pfile and not Path(pfile).is_absolute():  # relative to the recipe, as `t2vu train` resolves it
        data["concept"]["prompts_file"] = pfile = str(Path(recipe).resolve().parent / pfile)
    if variant.keep_prompt:
        data["concept"]["prompts"] = [p for p in data["concept"]["prompts"] if variant.keep_prompt(p)]
        if pfile:  # the CSV's prompts replace the list: filter them too, or the variant would change nothing
            data["concept"]["prompts_file"] = _filtered_csv(pfile, data["concept"].get("prompts_column", "prompt"),
                                                            variant, workdir)
    if model:
        set_by_path(data, "model.path", model)
    if steps:
        set_by_path(data, "train.steps", int(steps))
    cfg = validate(EraserTrainingConfig, data, f"{recipe} + variant {variant.name}")
    listed = list(cfg.concept.prompts)
    if cfg.concept.prompts_file:
        from unlearn.data import read_prompt_csv

        cols = [cfg.concept.prompts_column] + ([cfg.concept.paired_column] if cfg.concept.reference == "paired" else [])
        listed = [r[c] for r in read_prompt_csv(cfg.concept.prompts_file, cols) for c in cols]
    for p in [*listed, *(q for q in cfg.concept.preserve if q)]:
        try:  # the recipe lists prompts literally: catch a recipe written for another world
            world.parse_prompt(p)
        except ValueError as exc:
            raise ValueError(f"{recipe}: prompt {p!r} is not in the toy world ({exc}); regenerate the "
                             "recipe's prompt lists from toyworld.world") from None
    return cfg


def _filtered_csv(path: str, column: str, variant: Variant, workdir: Path | None) -> str:
    import tempfile

    from unlearn.csvsafe import csv_text
    from unlearn.data import read_prompt_csv

    with open(path, newline="") as f:
        cols = next(csv.reader(f))  # the header, in order
    rows = [r for r in read_prompt_csv(path, cols) if variant.keep_prompt(r[column])]
    out = Path(workdir or tempfile.mkdtemp(prefix="toy-variant-")) / f"{variant.name}_{Path(path).name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, csv_text(cols, rows))
    return str(out)


def eval_config(out: Path, n: int, *, model: str | None = None, eval_config_path: str | Path = EVAL_CONFIG,
                save_media: bool = False, rows_seed: int = 0):
    from eval.config import load_eval_config

    main, nontarget = write_prompt_sets(out, n, seed=rows_seed)
    sets = [f"prompts.path={main}", f"preserve.path={nontarget}",
            f"runtime.base_cache_dir={out / 'base_cache'}"]
    if model:
        sets.append(f"model.path={model}")
    if save_media:
        sets += ["output.save_gifs=true", "output.grid_rows=4"]
    return load_eval_config(eval_config_path, sets)


def write_prompt_sets(out: Path, n: int, n_full: int | None = None, seed: int = 0) -> tuple[Path, Path]:
    """The eval CSVs of size n. Rows are a prefix of the size-`n_full` sets (default: the
    larger of n and 128), so every size shares base videos with the default's. `seed` draws
    other rows (`world.eval_rows`): fresh prompts/seeds for a recipe chosen on seed 0's."""
    n_full = max(n, n_full or world.FULL_SET_SIZE)
    d = out / "prompts"
    tag = f"_seed{seed}" if seed else ""
    main, nontarget = d / f"main_{n}{tag}.csv", d / f"nontarget_{n}{tag}.csv"
    if not main.exists():
        world.write_csv([r for s in MAIN_SETS for r in world.eval_rows(s, n_full, seed)[:n]], main, with_set=True)
    if not nontarget.exists():
        world.write_csv(world.eval_rows("nontarget", n_full, seed)[:n], nontarget, with_set=True)
    return main, nontarget


# ----------------------------------------------------------------------------- metrics
def extract_metrics(summary: dict) -> dict:
    """Our metric names from an eval summary (nontarget rows are the eval's preserve set)."""
    m: dict = {}
    for which in ("base", "erased"):
        for k in ("target_rate", "synonym_rate", "two_target_rate", "two_object_both_present",
                  "two_target_other_present", "target_content_acc"):
            m[f"{k}_{which}"] = summary.get(f"{k}_{which}")
        for k in ("nontarget_acc", "shape_acc", "motion_acc"):
            m[f"{k}_{which}"] = summary.get(f"preserve_{k}_{which}")
    for k in ("target_content_kept", "synonym_content_kept", "second_object_kept"):
        m[k] = summary.get(k)
    m["nontarget_unchanged"] = summary.get("preserve_nontarget_unchanged")
    m["psnr_nontarget"] = summary.get("psnr_preserve")
    m["ssim_nontarget"] = summary.get("ssim_preserve")
    m["n_per_set"] = summary.get("n_target_base")
    return m


def check_targets(m: dict) -> dict[str, bool]:
    out = {}
    for key, (op, bar, rel) in TARGETS.items():
        v = m.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out[key] = False
            continue
        limit = bar * m[rel] if rel else bar
        out[key] = bool(v <= limit) if op == "<=" else bool(v >= limit)
    return out


# ----------------------------------------------------------------------------- running
def model_family(model: str | None) -> str:
    """The family whose recipe benchmarks `model` (None: the CogVideoX recipe's builtin:toy)."""
    from unlearn.models.families import family_of_model_dir
    from unlearn.models.registry import resolve_model_path

    family = family_of_model_dir(resolve_model_path(model)) if model else "cogvideox"
    if family not in RECIPES:
        raise ValueError(f"--model {model}: no toy recipe for family {family!r} (toy recipes: {', '.join(RECIPES)})")
    return family


def run_variant(out: Path, variant: Variant, *, n: int, model: str | None = None, steps: int | None = None,
                save_media: bool = False, progress: bool = False, family: str = "cogvideox",
                overrides: dict | None = None, rows_seed: int = 0) -> dict:
    """Train + evaluate one variant (skipped when its eraser and eval summary exist).

    overrides: dotted EraserTrainingConfig keys set on top of the recipe and the variant (`--set`).
    rows_seed: which eval rows (`world.eval_rows(seed=)`; 0: the rows the recipes were chosen on)."""
    from pipelines.tracking.mlflow_eval import run_tracked_eval
    from pipelines.runtime.run_folder import pin_config
    from unlearn.trainer import train

    vdir = out / "variants" / variant.name
    recipe, eval_path = RECIPES[family]
    cfg = method_config(variant, model=model, steps=steps, recipe=recipe, extra=overrides, workdir=vdir)
    ident = {"variant": variant.name, "overrides": variant.overrides, "n": n, "config": cfg.model_dump(mode="json")}
    if rows_seed:  # absent for seed 0, so folders written before the option still resume
        ident["rows_seed"] = rows_seed
    pin_config(vdir / "variant.json", ident, vdir)  # steps, size or recipe changed: refused
    eval_summary = vdir / "eval" / "summary.json"
    train_summary = vdir / "train" / "summary.json"
    if eval_summary.exists() and (vdir / "train" / "eraser" / "eraser_config.json").exists():
        _log(f"{variant.name}: done already (resumed)")
        ev = json.loads(eval_summary.read_text())
        tr = json.loads(train_summary.read_text())
        eval_s = ev.get("wall_seconds")
    else:
        _log(f"{variant.name}: training ({cfg.train.steps} steps) - {variant.description}")
        tr = train(cfg, vdir / "train", progress=progress)
        _log(f"{variant.name}: trained in {tr['wall_s']:.0f} s; evaluating {n} videos per set")
        ecfg = eval_config(out, n, model=model, save_media=save_media, eval_config_path=eval_path,
                           rows_seed=rows_seed)
        t0 = time.time()
        ev = run_tracked_eval(ecfg, vdir / "eval", eraser=vdir / "train" / "eraser", progress=progress)
        eval_s = round(time.time() - t0, 1)
    m = extract_metrics(ev)
    m.update(variant=variant.name, description=variant.description, n=n, steps=cfg.train.steps,
             train_s=tr.get("wall_s"), eval_s=eval_s, final_losses=tr.get("final"))
    _log(f"{variant.name}: red {m['target_rate_base']:.3f}->{m['target_rate_erased']:.3f}, "
         f"synonyms {m['synonym_rate_erased']:.3f}, non-target colour {m['nontarget_acc_erased']:.3f}, "
         f"shape {m['shape_acc_erased']:.3f}, content kept {m['target_content_kept']:.3f}, "
         f"2nd object kept {m['second_object_kept']:.3f}, PSNR {m['psnr_nontarget']:.1f}")
    return m


def subset_metrics(eval_dir: Path, n: int, target: str = "red") -> dict:
    """Metrics of the first `n` rows of every toy set of a finished eval (the size-n sets are
    prefixes of the larger ones, so this is the default recipe on the table's exact rows)."""
    from eval.classifiers.toy import ToyClassifier
    from eval.metrics import aggregate

    rows = [json.loads(p.read_text()) for p in finished_files(Path(eval_dir) / "rows", "*.json")]
    by_set: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["set"], r["index"])):
        by_set.setdefault(r["concept_type"], []).append(r)
    keep = [r for rs in by_set.values() for r in rs[:n]]
    return extract_metrics(aggregate(keep, ToyClassifier(target=target)) | {"n_target_base": n})


def collect_finished(out: Path) -> list[dict]:
    """Metrics of every finished variant in `out` (whatever size/steps it was run with)."""
    res = []
    for name in VARIANTS:
        vdir = out / "variants" / name
        try:
            ident = json.loads((vdir / "variant.json").read_text())
            ev = json.loads((vdir / "eval" / "summary.json").read_text())
            tr = json.loads((vdir / "train" / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        m = extract_metrics(ev)
        m.update(variant=name, description=VARIANTS[name].description, n=ident["n"],
                 steps=ident["config"]["train"]["steps"], train_s=tr.get("wall_s"),
                 eval_s=ev.get("wall_seconds"), final_losses=tr.get("final"))
        res.append(m)
    return res


def run_benchmark(output: str | Path, variants: list[str] | None = None, *, n: int = 64,
                  n_default: int = world.FULL_SET_SIZE, model: str | None = None, steps: int | None = None,
                  table_steps: int | None = None, progress: bool = False, overrides: dict | None = None,
                  rows_seed: int = 0) -> dict:
    """Run the variants (default first); returns {"default": metrics | None, "variants": [...]}.

    n: videos per set for the comparison variants; n_default: for the default recipe.
    steps / table_steps: override train.steps of the default / of the other variants.
    overrides: dotted EraserTrainingConfig keys set on every variant's training config (`--set`).
    rows_seed: the eval rows' seed (`world.eval_rows`; 0: the rows the recipes were chosen on).
    """
    import torch

    torch.set_num_threads(1)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    family = model_family(model)
    known = [k for k, v in VARIANTS.items() if family in v.families]
    names = variants or known
    unknown = [v for v in names if v not in known]
    if unknown:
        raise ValueError(f"unknown variants {unknown} for a {family} model; known: {known}")
    names = sorted(names, key=lambda v: v != "default")
    results = []
    t0 = time.time()
    for name in names:
        v = VARIANTS[name]
        is_default = name == "default"
        results.append(run_variant(
            out, v, n=n_default if is_default else n, model=model,
            steps=steps if is_default else (table_steps or steps), save_media=is_default, progress=progress,
            family=family, overrides=overrides, rows_seed=rows_seed,
        ))
    done = {r["variant"] for r in results}
    for r in collect_finished(out):  # variants finished by earlier invocations
        if r["variant"] not in done:
            results.append(r)
    order = list(VARIANTS)
    results.sort(key=lambda r: order.index(r["variant"]))
    default = next((r for r in results if r["variant"] == "default"), None)
    if default is not None:
        default["targets_met"] = check_targets(default)
        others = [r for r in results if r["variant"] != "default"]
        if others and default["n"] > n:  # the default on exactly the comparison rows, first
            sub = subset_metrics(out / "variants" / "default" / "eval", n)
            sub.update(variant="default", description=f"the default's first {n} rows per set", n=n,
                       steps=default["steps"], train_s=default["train_s"], eval_s=None)
            results.insert(0, sub)
    md = write_table(out, results)
    payload = {"default": default, "variants": results, "wall_s": round(time.time() - t0, 1)}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2, default=str))
    if md:
        print(md)
    return payload
