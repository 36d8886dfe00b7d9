"""`t2vu plan`'s predictions for the shipped real-model configs, written to benchmarks/results/memory_plan_predictions.json.

    python benchmarks/plan_predictions.py [--results-file PATH]

The tables of docs/memory-plan.md ("Predictions for the shipped CogVideoX configs", "Wan") are rendered
from this file (`python benchmarks/render_results.py`), so a change to the plan's terms moves them with
it instead of leaving hand-typed numbers behind. Each row is the plan of one shipped config as `t2vu plan`
makes it (device cuda: CUDA autocast's fp32 norms included), against 80 and 141 GB cards; a row that does
not fit names the fix `t2vu plan` would print. Numbers only: nothing is loaded or run (seconds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CARDS = (80, 141)
C2B, C5B, S2B = "configs/cogvideox-2b-nudity.yaml", "configs/cogvideox-5b-nudity.yaml", "configs/search/cogvideox-2b-nudity-gpu.yaml"
W = "configs/wan/"
NO_CKPT = ["train.gradient_checkpointing=false"]
# (table, label, config, overrides, mode, world size)
ROWS = [
    ("cogvideox", "2B, `t2vu train` (1 GPU, 4+4 rows)", C2B, [], "train", 1),
    ("cogvideox", "2B, `train --distributed` (4 GPUs, 1+1 rows each)", C2B, [], "distributed", 4),
    ("cogvideox", "2B, `tune`/`run` trial (4 GPUs; the shipped Optuna search runs no proxy eval)", S2B, [], "tune", 4),
    ("cogvideox", "2B, the same search under ASHA (`--set search.algorithm=asha`: proxy eval on rank 0)", S2B,
     ["search.algorithm=asha"], "tune", 4),
    ("cogvideox", "5B, `t2vu train` (1 GPU, 4+4 rows)", C5B, [], "train", 1),
    ("cogvideox", "5B, `train --distributed` (4 GPUs, 1+1 rows each)", C5B, [], "distributed", 4),
    ("cogvideox", "5B, 4 GPUs, checkpointing off", C5B, NO_CKPT, "distributed", 4),
    ("cogvideox", "5B, 1 GPU, checkpointing off", C5B, NO_CKPT, "train", 1),
    ("wan", "1.3B, `t2vu train` (1 GPU, 4+4 rows)", W + "wan2.1-t2v-1.3b-nudity.yaml", [], "train", 1),
    ("wan", "1.3B, `train --distributed` (4 GPUs, 1+1 rows each)", W + "wan2.1-t2v-1.3b-nudity.yaml", [], "distributed", 4),
    ("wan", "14B, `t2vu train` (1 GPU, 4+4)", W + "wan2.1-t2v-14b-nudity.yaml", [], "train", 1),
    ("wan", "14B, `train --distributed` (4 GPUs, 1+1)", W + "wan2.1-t2v-14b-nudity.yaml", [], "distributed", 4),
    ("wan", "2.2 TI2V-5B, `train --distributed` (4 GPUs, 1+1)", W + "wan2.2-ti2v-5b-nudity.yaml", [], "distributed", 4),
    ("wan", "2.2 TI2V-5B, 4 GPUs, checkpointing off", W + "wan2.2-ti2v-5b-nudity.yaml", NO_CKPT, "distributed", 4),
    ("wan", "2.2 T2V-A14B, `train --distributed` (4 GPUs, 1+1)", W + "wan2.2-t2v-a14b-nudity.yaml", [], "distributed", 4),
    ("wan", "14B, 4 GPUs, backbone sharded (`distributed.shard_backbone`)", W + "wan2.1-t2v-14b-nudity.yaml",
     ["distributed.shard_backbone=true"], "distributed", 4),
    ("wan", "2.2 T2V-A14B, 4 GPUs, backbone sharded", W + "wan2.2-t2v-a14b-nudity.yaml",
     ["distributed.shard_backbone=true"], "distributed", 4),
    ("wan", "2.2 TI2V-5B at 121×704×1280, 2 GPUs, 1+1 rows each, backbone sharded", W + "wan2.2-ti2v-5b-nudity.yaml",
     ["distributed.shard_backbone=true", "train.batch_size=2", "train.preserve_batch_size=2"], "distributed", 2),
    ("wan", "2.2 T2V-A14B, 4 GPUs, sharded + sequence-parallel 2 (2+2 rows: two groups of 2 share a row each)",
     W + "wan2.2-t2v-a14b-nudity.yaml", ["distributed.shard_backbone=true", "distributed.sequence_parallel=2",
                                         "train.batch_size=2", "train.preserve_batch_size=2"], "distributed", 4),
    ("wan", "2.2 T2V-A14B, 4 GPUs, sharded + sequence-parallel 4 at 4+4 rows (one group: 4x the rows at 1/4 of the "
     "tokens)", W + "wan2.2-t2v-a14b-nudity.yaml", ["distributed.shard_backbone=true", "distributed.sequence_parallel=4"],
     "distributed", 4),
]


def predict(config: str, overrides: list[str], mode: str, world: int) -> dict:
    """One row: the plan's peak, dominant term and phase, and per card whether it fits or the fix `t2vu plan` names."""
    from pipelines.plan.fixes import find_fix
    from pipelines.plan.memory_check import load_plan_config, make_request, plan_request
    from pipelines.plan.memory_plan import GIB

    path = ROOT / config
    method, pipeline = load_plan_config(path, overrides)
    row: dict = {}
    for gb in CARDS:
        req = make_request(method, pipeline, config_dir=path.parent, mode=mode, world_size=world, gpu_memory_gb=gb)
        plan, _ = plan_request(req)
        row.update(peak_gb=round(plan.peak_bytes / GIB, 1), dominant_term=plan.dominant.name, peak_phase=plan.peak_phase)
        if plan.fits:
            row[f"fits_{gb}"] = "yes"
        else:
            fix = find_fix(req, plan)
            row[f"fits_{gb}"] = (f"no (fix: {fix['setting']} → {fix['peak_gb']:.1f})" if fix.get("setting")
                                 else "no")
    return row


def main(argv: list[str] | None = None) -> int:
    from pipelines.runtime.results_file import RESULTS_DIR, write_results

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results-file", default=str(RESULTS_DIR / "memory_plan_predictions.json"))
    a = ap.parse_args(argv)
    figures: dict = {"cogvideox": [], "wan": []}
    for table, label, config, overrides, mode, world in ROWS:
        figures[table].append({"run": label, "config": config, "overrides": overrides, "mode": mode,
                               "world_size": world, **predict(config, overrides, mode, world)})
    write_results(a.results_file, figures, settings={"device": "cuda", "cards_gb": list(CARDS)})
    for table in figures.values():
        for r in table:
            print(f"{r['peak_gb']:>8.1f} GB  {r['run']}")
    print(f"-> {a.results_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
