"""`t2vu plan`'s sharded-backbone terms vs the measured per-rank peak of a real sharded training step, on this CPU.

Run (minutes):  nice -n 5 .venv/bin/python benchmarks/sharded_memory_check.py [--only NAME] [--results-file PATH]

For each size (Wan transformers whose weights dominate the step: that is what sharding changes; random weights,
fp32; built by benchmarks/memory_plan_check.py's `build_model_dir`), 2 gloo ranks (torch.multiprocessing, spawned
with memory_plan_check's glibc settings: every allocation >= 64 KB its own mmap, so RSS follows live tensors)
run the worker's real path with `distributed.shard_backbone: true`, world 2, ZeRO-2:
`TrainingSession` loaded into shards (`unlearn.sharded_load.sharded_loading`) -> `shard_session` -> the
DeepSpeed ZeRO-2 engine (`pipelines.train.engine.DeepSpeedEngine`, the worker's ds config) -> one step
(steady state: the engine's buffers and optimizer state allocated by a first step), then the measured step.

Measured per rank = VmHWM during the step (reset just before) minus VmRSS after a warm-up of the same path on the
built-in tiny Wan in the same process (imports, gloo, DeepSpeed, kernels). Predicted = `plan_memory` for the
same pipeline config in mode distributed, world 2, device cpu. No coefficient is fitted. Writes
benchmarks/results/sharded_memory_calibration.json (pipelines/runtime/results_file); exit 1 when a size is
outside the tolerance (default 15%).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from benchmarks.memory_plan_check import MALLOC_ENV, _kb, build_model_dir, method_config  # noqa: E402

WORLD = 2
# Wan: heads x 128, layers, ffn; small videos so that the backbone's weights are most of the peak
SIZES = [
    dict(name="shard-narrow", family="wan", heads=4, layers=8, ffn=2048, frames=9, height=128, width=128, batch=2,
         preserve=2, ckpt=False, expand=False),
    dict(name="shard-wide", family="wan", heads=8, layers=4, ffn=4096, frames=9, height=128, width=192, batch=2,
         preserve=2, ckpt=False, expand=False),
    dict(name="shard-deep-ckpt", family="wan", heads=6, layers=12, ffn=3072, frames=9, height=192, width=192,
         batch=2, preserve=2, ckpt=True, expand=False),
]


def pipeline_config(size: dict, model_dir: str, cache_dir: str):
    from pipelines.config.pipeline import PipelineConfig

    data = method_config(size, model_dir, cache_dir).model_dump(mode="json")
    # ZeRO-2's reduce bucket (an fp32 buffer of reduce_bucket_size elements, 50M by default) is allocated whole but
    # written only as far as the erasers' gradients reach: on a GPU all of it is allocated memory, on this CPU the
    # unwritten pages never become resident. Sized to the erasers here, the plan's term and the RSS are the same bytes.
    from pipelines.plan.memory_plan import eraser_parameters

    hidden = size["heads"] * 128
    bucket = eraser_parameters(hidden, data["eraser"]["rank"], size["layers"])
    # a size may instead (or also) split the sequence (benchmarks/sp_memory_check.py): "sp" ranks share the batch
    data["distributed"] = {"num_workers": WORLD, "zero_stage": 2, "shard_backbone": size.get("shard", True),
                           "sequence_parallel": size.get("sp", 1),
                           "deepspeed_overrides": {"zero_optimization": {"reduce_bucket_size": bucket}}}
    return PipelineConfig.model_validate(data)


def _session_and_engine(cfg, rank: int):
    """The worker's order (pipelines/train/worker.py): session (a sequence-parallel group shares one batch share),
    backbone sharded, sequence split, then the engine."""
    import contextlib

    from pipelines.config.distributed import deepspeed_config
    from pipelines.train.engine import DeepSpeedEngine
    from pipelines.train.worker import worker_method_config
    from unlearn.sequence_parallel import enable_for_workers
    from unlearn.session import TrainingSession
    from unlearn.sharded_load import sharded_loading
    from unlearn.sharding import shard_session
    from unlearn.loop import make_optimizer

    sp, shard = cfg.distributed.sequence_parallel, cfg.distributed.shard_backbone
    method = worker_method_config(cfg, WORLD // sp)
    with sharded_loading("cpu") if shard else contextlib.nullcontext():
        session = TrainingSession(method, device="cpu", rank=rank // sp, world_size=WORLD // sp)
    if shard:
        shard_session(session)
    enable_for_workers(session.objective, sp, session.eraser_set.parameters())
    params = session.trainable_parameters()
    engine = DeepSpeedEngine(session.objective, params, make_optimizer(method.train, params), deepspeed_config(cfg), WORLD)
    return session, engine


def _step(session, engine, i: int) -> float:
    t0 = time.time()
    losses = engine.forward(session.batch(i))
    engine.backward(losses["loss"])
    engine.step()
    return time.time() - t0


def rank_main(rank: int, size: dict, model_dir: str, cache_dir: str, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from unlearn.sharding import resident_bytes

    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # what DeepSpeed reads
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        tiny = {**size, "frames": 9, "height": 32, "width": 32, "batch": 2, "preserve": 2}
        session, engine = _session_and_engine(pipeline_config(tiny, "builtin:tiny-wan", cache_dir), rank)
        _step(session, engine, 0)
        _detach(session.objective)
        del session, engine
        gc.collect()
        baseline = _kb("VmRSS")
        session, engine = _session_and_engine(pipeline_config(size, model_dir, cache_dir), rank)
        _step(session, engine, 0)  # steady state: engine buffers, AdamW moments, grads of a previous step
        gc.collect()
        resident = _kb("VmRSS")
        dist.barrier()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        seconds = _step(session, engine, 1)
        peak = _kb("VmHWM")
        got = {"baseline": baseline, "resident": resident - baseline, "peak": peak - baseline, "step_s": seconds,
               "backbone_resident_bytes": resident_bytes(session.spec.transformer)}
        Path(out, f"rank{rank}.json").write_text(json.dumps(got))
        _detach(session.objective)
    finally:
        dist.destroy_process_group()


def _detach(objective) -> None:
    if objective.sequence_parallel is not None:  # its processors first, then the capture's (sequence_parallel.remove)
        objective.sequence_parallel.remove()
    objective.detach()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_size(size: dict, work: Path) -> dict:
    import torch.multiprocessing as mp

    from pipelines.plan.memory_check import PlanRequest, plan_request

    model_dir = build_model_dir(size, work / size["name"])
    cache = str(work / "embeddings")
    cfg = pipeline_config(size, str(model_dir), cache)
    from unlearn.session import prepare_embeddings

    tiny = {**size, "frames": 9, "height": 32, "width": 32}
    for c in (cfg, pipeline_config(tiny, "builtin:tiny-wan", cache)):  # as the driver does: no rank loads a text encoder
        prepare_embeddings(c.method())
    plan, _ = plan_request(PlanRequest(cfg.method(), pipeline=cfg, mode="distributed", world_size=WORLD, device="cpu"))
    out = work / f"{size['name']}-out"
    out.mkdir()
    os.environ.update(MALLOC_ENV)  # read by glibc when each spawned rank starts
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.start_processes(rank_main, args=(size, str(model_dir), cache, _free_port(), str(out)), nprocs=WORLD, join=True,
                       start_method="spawn")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    peak = max(r["peak"] for r in ranks)
    terms = plan.summary()["terms"]
    return {"name": size["name"], "size": size, "predicted_gb": plan.peak_bytes / 2**30, "measured_gb": peak / 2**30,
            "ratio": plan.peak_bytes / peak, "measured_per_rank_gb": [r["peak"] / 2**30 for r in ranks],
            "predicted_backbone_gb": terms.get("backbone weights"), "predicted_gathered_gb": terms.get("gathered backbone blocks"),
            "measured_backbone_resident_gb": [r["backbone_resident_bytes"] / 2**30 for r in ranks],
            "peak_phase": plan.peak_phase, "step_s": max(r["step_s"] for r in ranks), "terms_gb": terms}


def main(sizes: list[dict] = SIZES, results: str = "sharded_memory_calibration.json", doc: str = __doc__,
         settings: dict | None = None, figures: dict | None = None) -> int:
    """The command line of this check and of benchmarks/sp_memory_check.py (its sizes, file, settings)."""
    from pipelines.runtime.results_file import RESULTS_DIR, write_results

    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], help="size name(s) to run")
    ap.add_argument("--tolerance", type=float, default=0.15)
    ap.add_argument("--results-file", default=str(RESULTS_DIR / results))
    args = ap.parse_args()
    sizes = [s for s in sizes if not args.only or s["name"] in args.only]
    rows, t0 = [], time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="t2vu-shardmem-") as tmp:
        for size in sizes:
            r = run_size(size, Path(tmp))
            rows.append(r)
            print(f"{r['name']:<16} predicted {r['predicted_gb']:.3f} GB measured {r['measured_gb']:.3f} GB per rank "
                  f"(ranks {', '.join(f'{v:.3f}' for v in r['measured_per_rank_gb'])}) ratio {r['ratio']:.3f} | backbone "
                  f"{r['predicted_backbone_gb']:.3f} GB planned vs {r['measured_backbone_resident_gb'][0]:.3f} held, "
                  f"gathered {r['predicted_gathered_gb'] or 0:.3f} | peak in {r['peak_phase']}", flush=True)
    ok = all(abs(r["ratio"] - 1) <= args.tolerance for r in rows)
    figures = {**(figures or {}), "within_tolerance": ok, "tolerance": args.tolerance, "world_size": WORLD,
               "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]}
    write_results(args.results_file, figures,
                  settings={"backend": "gloo", "zero_stage": 2, "shard_backbone": True, "dtype": "float32",
                            **(settings or {}), "torch_threads_per_rank": 1, "load_average_before": load_before,
                            "load_average_after": os.getloadavg()},
                  timings={"total_s": round(time.time() - t0, 1)})
    print(json.dumps({"within_tolerance": ok, "ratios": {r["name"]: round(r["ratio"], 3) for r in rows}}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
