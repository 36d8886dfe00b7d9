"""Sharded frozen backbone (issue 23): 2 gloo ranks vs 1 process on the same global batch, and ZeRO-3 vs FSDP2.

    python benchmarks/sharded_step.py [--family wan|cogvideox|wan-a14b] [--steps 6] [--compare-zero3]

Runs the fused step (tests/test_sharded_backbone.py's tiny model, erasers and batch: 2 concept + 2 preserved
rows) as
- `single`: one process, backbone whole, the global batch;
- `fsdp`: 2 ranks, `unlearn.sharding.shard_backbone` (FSDP2), half the batch each, eraser gradients all-reduced;
- `fsdp+zero2`: the same sharded backbone under the DeepSpeed ZeRO-2 engine that trains the erasers today
  (`deepspeed.initialize(model=ErasureObjective, ...)`: what the worker would run with sharding on);
- with --compare-zero3, `zero3` and `zero3+checkpointing`: DeepSpeed ZeRO-3 partitioning the backbone instead
  (the backbone registered as a submodule of the engine's model so ZeRO-3 sees it; erasers partitioned too).
Each 2-rank mode reports: steps/s, its ratio to `single`, the bytes every rank's collectives moved per step
(result sizes of all-gathers / all-reduces / reduce-scatters, counted by wrapping torch.distributed's calls),
the largest |loss - single-process loss| over ranks and |eraser gradient - single-process gradient| (full
gradients: DeepSpeed's `safe_get_full_grad`), resident backbone parameter bytes per rank, or the error it
stopped with. 2 CPU cores and gloo are not a GPU interconnect: the ratio says what the sharding costs here,
the bytes what a cluster would move. Writes benchmarks/results/sharded_step.json (pipelines/runtime/results_file),
with `uptime`'s load averages before and after (the 2 cores are shared: other jobs slow every mode).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

WORLD = 2
COLLECTIVES = {  # name -> which argument holds the tensor whose size is what the rank receives / sends
    "all_gather_single": 0, "all_gather_into_tensor": 0, "_all_gather_base": 0, "all_reduce": 0,
    "reduce_scatter_tensor": 0, "_reduce_scatter_base": 0, "broadcast": 0, "all_gather": 0,
}


def count_collectives() -> dict[str, int]:
    """Wrap torch.distributed's collectives (looked up at call time by FSDP2 and DeepSpeed) to sum bytes."""
    import torch.distributed as dist

    counts: dict[str, int] = {}

    def wrap(name, index):
        orig = getattr(dist, name)

        def counted(*args, **kwargs):
            t = args[index] if len(args) > index else next(iter(kwargs.values()))
            ts = t if isinstance(t, (list, tuple)) else [t]
            counts[name] = counts.get(name, 0) + sum(x.numel() * x.element_size() for x in ts)
            return orig(*args, **kwargs)

        setattr(dist, name, counted)

    for name, index in COLLECTIVES.items():
        if hasattr(dist, name):
            wrap(name, index)
    return counts


def uptime_load() -> dict:
    """`uptime`'s line and the 1/5/15-minute load averages (the machine is shared: say how loaded it was)."""
    import subprocess

    try:
        line = subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        line = ""
    return {"uptime": line, "load_1_5_15": [round(v, 2) for v in os.getloadavg()]}


def ds_config(stage: int) -> dict:
    z = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True, "reduce_bucket_size": 50_000_000}
    if stage == 3:
        z.update({"stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 50_000_000})
    return {"train_micro_batch_size_per_gpu": 1, "train_batch_size": WORLD, "gradient_accumulation_steps": 1,
            "zero_optimization": z, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}


def rank_main(rank: int, mode: str, kind: str, path: str, port: int, steps: int, out: str) -> None:
    import torch.distributed as dist

    from tests.test_sharded_backbone import build, global_batch, slice_of
    from unlearn.sharding import resident_bytes, shard_backbone

    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    res: dict = {"mode": mode}
    try:
        spec, erasers, objective = build(kind, Path(path), checkpointing=mode.endswith("checkpointing"))
        batch = slice_of(global_batch(spec, kind), rank)
        params = [p for p in erasers.parameters()]
        names = [n for n, _ in erasers.named_parameters()]
        engine = None
        if mode.startswith("fsdp"):
            shard_backbone(spec, erasers)
            res["resident_backbone_bytes"] = resident_bytes(spec.transformer)
        if mode == "fsdp+zero2" or mode.startswith("zero3"):
            import deepspeed
            from deepspeed.utils import safe_get_full_grad

            model = objective
            if mode.startswith("zero3"):  # ZeRO-3 partitions what the engine's model registers: the backbone too
                model = torch.nn.Module()
                model.objective, model.backbone = objective, spec.transformer
                model.forward = lambda b: objective(b)
            opt = torch.optim.SGD(params, lr=0.0)  # lr 0: every timed step sees the same weights
            engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=opt,
                                              config=ds_config(3 if mode.startswith("zero3") else 2))
            if mode.startswith("zero3"):
                res["resident_backbone_bytes"] = sum(p.ds_tensor.numel() * p.ds_tensor.element_size()
                                                     for p in spec.transformer.parameters())

        def one_step():
            if engine is None:
                erasers.zero_grad(set_to_none=True)
                loss = objective(batch)["loss"]
                loss.backward()
                grads = [p.grad for p in params]
                for g in grads:
                    dist.all_reduce(g)
                    g /= WORLD
            else:
                loss = engine(batch)["loss"]
                engine.backward(loss)
                grads = [safe_get_full_grad(p).clone() for p in params]
                engine.step()
            return float(loss.detach()), grads

        loss, grads = one_step()  # warm-up (lazy init, first allocations); its values are the ones compared
        counts = count_collectives()
        t0 = time.perf_counter()
        for _ in range(steps):
            one_step()
        dt = time.perf_counter() - t0
        res.update({"loss": loss, "grads": dict(zip(names, grads)), "steps_per_s": steps / dt,
                    "bytes_per_step": {k: v // steps for k, v in counts.items()}})
    except Exception as exc:  # a mode that cannot run is a result: the line it stopped with
        res["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    torch.save(res, os.path.join(out, f"{mode}-rank{rank}.pt"))
    dist.destroy_process_group()


def run_ranks(mode: str, kind: str, path: Path, steps: int, out: str, timeout: float) -> list[dict]:
    import torch.multiprocessing as mp

    from tests.test_sharded_backbone import free_port

    ctx = mp.start_processes(rank_main, args=(mode, kind, str(path), free_port(), steps, out), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for p in ctx.processes:  # the ranks this call started, by their own handles
                    p.kill()
                return [{"mode": mode, "error": f"no result within {timeout:.0f} s (hung collective?)"}]
    except Exception as exc:  # a rank that died (e.g. a crash inside a collective)
        return [{"mode": mode, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}]
    return [torch.load(os.path.join(out, f"{mode}-rank{r}.pt")) for r in range(WORLD)]


def summarise(ranks: list[dict], ref_losses: list[float], ref_grads: dict, single_rate: float) -> dict:
    errors = [r["error"] for r in ranks if "error" in r]
    if errors:
        return {"error": errors[0]}
    loss_diff = max(abs(r["loss"] - ref_losses[i]) for i, r in enumerate(ranks))
    grad_diff = max(float((r["grads"][n] - g).abs().max()) for r in ranks for n, g in ref_grads.items())
    rate = min(r["steps_per_s"] for r in ranks)
    out = {"steps_per_s": rate, "ratio_to_single": rate / single_rate, "max_abs_loss_diff": loss_diff,
           "max_abs_grad_diff": grad_diff, "bytes_per_step_per_rank": ranks[0]["bytes_per_step"]}
    if "resident_backbone_bytes" in ranks[0]:
        out["resident_backbone_bytes_per_rank"] = max(r["resident_backbone_bytes"] for r in ranks)
    return out


def main(argv=None) -> int:
    from pipelines.runtime.results_file import RESULTS_DIR, write_results
    from tests.test_sharded_backbone import build, global_batch, make_model, slice_of, step

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="wan", choices=("wan", "cogvideox", "wan-a14b"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--compare-zero3", action="store_true")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a 2-rank mode may take")
    ap.add_argument("--out", default=str(RESULTS_DIR / "sharded_step.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load_before = uptime_load()
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="t2vu-sharded-") as tmp:
        path = make_model(args.family, Path(tmp))
        spec, erasers, objective = build(args.family, path, checkpointing=False)
        batch = global_batch(spec, args.family)
        ref = [step(objective, slice_of(batch, r)) for r in range(WORLD)]
        ref_grads = {n: (ref[0][1][n] + ref[1][1][n]) / WORLD for n in ref[0][1]}
        step(objective, batch)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(objective, batch)
        single_rate = args.steps / (time.perf_counter() - t0)
        whole = sum(p.numel() * p.element_size() for p in spec.transformer.parameters())
        objective.detach()
        modes = ["fsdp", "fsdp+zero2"] + (["zero3", "zero3+checkpointing"] if args.compare_zero3 else [])
        figures = {"single": {"steps_per_s": single_rate, "backbone_bytes": whole}}
        for mode in modes:
            figures[mode] = summarise(run_ranks(mode, args.family, path, args.steps, tmp, args.timeout),
                                      [r[0] for r in ref], ref_grads, single_rate)
            if mode.startswith("zero3"):  # measured: only a broadcast and an 8-byte all_reduce reach torch.distributed
                figures[mode]["bytes_note"] = ("incomplete: on CPU DeepSpeed runs ZeRO-3's gathers and reductions "
                                               "through its shm comm op, outside torch.distributed")
            print(mode, figures[mode], flush=True)
    settings = {"family": args.family, "world_size": WORLD, "steps": args.steps, "global_batch": "2 concept + 2 preserved",
                "geometry": "9x32x32", "backend": "gloo", "torch_threads_per_rank": 1,
                # the 2 cores are shared (other jobs ran alongside): steps/s are only comparable at similar load
                "load_average_before": load_before, "load_average_after": uptime_load()}
    write_results(args.out, figures, settings=settings, timings={"total_s": round(time.time() - t_start, 1)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
