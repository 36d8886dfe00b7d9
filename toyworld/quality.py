"""Toy model quality: generate the benchmark's prompt sets through the pipeline, score with the detector.

`measure_quality(pipe)` is what `toy_quality.json` holds (per set and pooled colour /
shape / motion accuracy, two-object presence and binding, whether `QUALITY_BARS` are met);
`measure_dir(DIR)` re-measures a saved model with the current detector, no training.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from unlearn.fsutil import atomic_write_text
from toyworld import detector, world
from toyworld.parts import family_of_dir, family_of_pipeline, parts_of

#: The base-quality bars of issue 3 (single-object colour/shape/motion, two-object both colours).
QUALITY_BARS = {"colour_acc": 0.95, "shape_acc": 0.90, "motion_acc": 0.90, "two_object_both_present": 0.90}

#: The file next to a built model that records its measured quality (and the build's stats).
QUALITY_FILE = "toy_quality.json"


def generation_of(pipe) -> dict:
    """The sampler settings the pipeline's toy family was validated with (its components' GENERATION)."""
    return parts_of(family_of_pipeline(pipe)).GENERATION


def generate(pipe, rows: list[dict], batch_size: int = 32, **settings) -> np.ndarray:
    """Videos for prompt rows through the toy pipeline (CogVideoX or Wan), one seeded generator per row.

    Returns float32 [N, F, H, W, 3] in [0, 1]. `settings` override the family's `GENERATION`.
    """
    kw = {**generation_of(pipe), **settings}
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        gens = [torch.Generator().manual_seed(int(r["seed"])) for r in chunk]
        res = pipe(prompt=[r["prompt"] for r in chunk], generator=gens, output_type="np", **kw)
        out.append(np.asarray(res.frames, dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def score_videos(rows: list[dict], frames: np.ndarray) -> dict:
    """Detector-based quality of generated videos, per set and pooled.

    Single-object sets: colour / shape / motion accuracy (colour = the prompt's colour is
    the only colour present). Two-object sets: both named colours present (order-invariant),
    exactly those colours, and colour-shape binding.
    """
    per_set: dict[str, dict[str, list[bool]]] = {}
    for r, f in zip(rows, frames):
        scene = world.parse_prompt(r["prompt"])
        det = detector.detect(f)
        acc = per_set.setdefault(r["set"], {})
        if len(scene.objects) == 1:
            a = detector.agrees(det, scene)
            for k in ("colour", "shape", "motion"):
                acc.setdefault(k, []).append(a[k])
            acc.setdefault("all", []).append(all(a.values()))
        else:
            acc.setdefault("both_present", []).append(set(scene.colours) <= set(det.colours))
            acc.setdefault("exact_colours", []).append(set(scene.colours) == set(det.colours))
            acc.setdefault("binding", []).append(detector.agrees(det, scene)["shape"])
    sets = {s: {k: float(np.mean(v)) for k, v in acc.items()} | {"n": len(next(iter(acc.values())))} for s, acc in per_set.items()}
    single = [s for s in sets if not s.startswith("two")]
    two = [s for s in sets if s.startswith("two")]

    def pooled(names, key):
        vals = [v for s in names for v in per_set[s][key]]
        return float(np.mean(vals)) if vals else float("nan")

    summary = {
        "colour_acc": pooled(single, "colour"),
        "shape_acc": pooled(single, "shape"),
        "motion_acc": pooled(single, "motion"),
        "all_three_acc": pooled(single, "all"),
        "two_object_both_present": pooled(two, "both_present"),
        "two_object_exact_colours": pooled(two, "exact_colours"),
        "two_object_binding": pooled(two, "binding"),
        "n_single": sum(sets[s]["n"] for s in single),
        "n_two_object": sum(sets[s]["n"] for s in two),
    }
    summary["meets_bars"] = all(summary[k] >= v for k, v in QUALITY_BARS.items())
    return {"summary": summary, "sets": sets}


def measure_quality(pipe, n: int = world.FULL_SET_SIZE, batch_size: int = 32, seed: int = 0, **settings) -> dict:
    """Generate every benchmark set (`n` rows each) and score it with the detector."""
    rows = world.all_eval_rows(n, seed=seed)
    t0 = time.time()
    frames = generate(pipe, rows, batch_size, **settings)
    gen_s = time.time() - t0  # wall time, shared CPU included
    q = score_videos(rows, frames)
    q["generation"] = {**generation_of(pipe), **settings, "n_videos": len(rows), "seconds": round(gen_s, 1), "row_seed": seed}
    return q


def measure_dir(model_dir: str | os.PathLike, n: int = world.FULL_SET_SIZE, write: bool = True) -> dict:
    """Re-measure a built model directory with the current detector (no training).

    Loads through its pipeline's `from_pretrained` (CogVideoX or Wan), scores every benchmark set and, with
    `write`, rewrites `toy_quality.json` keeping its `build` section.
    """
    quality = measure_quality(parts_of(family_of_dir(model_dir)).load_pipeline(model_dir), n)
    path = Path(model_dir) / QUALITY_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if "build" in old:
            quality["build"] = old["build"]
    if write:
        write_quality(model_dir, quality)
    return quality



def write_quality(model_dir: str | os.PathLike, quality: dict) -> None:
    """`toy_quality.json` in `model_dir`, atomically (a reader never sees half a file)."""
    atomic_write_text(Path(model_dir) / QUALITY_FILE, json.dumps(quality, indent=2, default=str) + "\n")
