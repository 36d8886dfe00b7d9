"""Sequence parallelism (issue 23): Ulysses' exchange vs ring attention's, and the sequence-parallel step, on 2 gloo ranks.

    python benchmarks/sequence_parallel.py [--tokens 8192] [--heads 8] [--head-dim 64] [--reps 20] [--steps 4]

1. The exchange one attention needs per rank in forward, on [1, tokens/2, heads x head_dim] fp32 shards:
   - `ulysses`: what unlearn.sequence_parallel runs, 3 all-to-alls to heads (q, k, v) + 1 back (the output);
   - `ulysses_stacked`: the same bytes in 2 all-to-alls (q, k, v stacked; not what the module runs);
   - `ring`: what ring attention would run, P - 1 rounds of passing the k and v shards to the next rank
     (isend/irecv); its compute is the same attention split in blocks, so only the exchange differs.
   Median seconds over --reps and the bytes each rank sends (counted from the tensors handed to gloo).
2. The fused step on tiny Wan (tests/test_sharded_backbone.py's model and erasers; 2 concept + 2 preserved rows,
   9x64x64 frames): 1 process vs 2 ranks sharing the batch with `enable_sequence_parallel`: steps/s, their ratio,
   the bytes each rank's collectives moved per step, and the largest loss / eraser-gradient difference.
2 CPU cores and gloo are not a GPU interconnect: the seconds say what it costs here, the bytes what a cluster
moves. Writes benchmarks/results/sequence_parallel.json (pipelines/runtime/results_file), with the load averages.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

WORLD = 2
SHAPE = (9, 64, 64)


def _count(sent: list):
    """Wrap the collectives the module calls to add up the bytes this rank hands to gloo."""
    import torch.distributed as dist

    real = {n: getattr(dist, n) for n in ("all_to_all_single", "all_gather", "all_reduce")}

    def a2a(out, inp, *a, **k):
        sent[0] += inp.numel() * inp.element_size()
        return real["all_to_all_single"](out, inp, *a, **k)

    def gather(bufs, t, *a, **k):
        sent[0] += t.numel() * t.element_size()
        return real["all_gather"](bufs, t, *a, **k)

    def reduce(t, *a, **k):
        sent[0] += t.numel() * t.element_size()
        return real["all_reduce"](t, *a, **k)

    dist.all_to_all_single, dist.all_gather, dist.all_reduce = a2a, gather, reduce
    return real


def exchange(rank: int, args, sp) -> dict:
    import torch.distributed as dist

    from unlearn.sequence_parallel import _heads_to_seq, _seq_to_heads, split_sizes

    sizes = split_sizes(args.tokens, WORLD)
    sp.sizes = sizes
    d = args.heads * args.head_dim
    x = [torch.randn(1, args.heads, sizes[rank], args.head_dim) for _ in range(3)]
    kv = [torch.randn(1, sizes[rank], d) for _ in range(2)]
    times = {"ulysses": [], "ulysses_stacked": [], "ring": []}
    sent = {"ulysses": 0, "ulysses_stacked": 0, "ring": 0}
    for rep in range(args.reps):
        dist.barrier()
        t = time.perf_counter()
        heads = [_seq_to_heads(a, sizes, None) for a in x]
        _heads_to_seq(heads[0], sizes, rank, None)  # the output's way back (same size as q)
        times["ulysses"].append(time.perf_counter() - t)
        if rep == 0:
            sent["ulysses"] = 4 * x[0].numel() * 4 * (WORLD - 1) // WORLD  # what leaves the rank per all-to-all
        dist.barrier()
        t = time.perf_counter()  # the same bytes in 2 all-to-alls: q, k, v stacked along the batch
        heads = _seq_to_heads(torch.cat(x), sizes, None)
        _heads_to_seq(heads[:1], sizes, rank, None)
        times["ulysses_stacked"].append(time.perf_counter() - t)
        sent["ulysses_stacked"] = sent["ulysses"]
        dist.barrier()
        t = time.perf_counter()
        cur = kv
        for _ in range(WORLD - 1):  # pass k, v to the next rank, take the previous rank's
            nxt = [torch.empty_like(c) for c in cur]
            ops = [dist.P2POp(dist.isend, c, (rank + 1) % WORLD) for c in cur]
            ops += [dist.P2POp(dist.irecv, n, (rank - 1) % WORLD) for n in nxt]
            for req in dist.batch_isend_irecv(ops):
                req.wait()
            cur = nxt
        times["ring"].append(time.perf_counter() - t)
        if rep == 0:
            sent["ring"] = (WORLD - 1) * sum(c.numel() * 4 for c in kv)
    return {k: {"median_s": statistics.median(v), "bytes_sent_per_rank": sent[k]} for k, v in times.items()}


def step_rank(rank: int, port: int, model: str, args, out: str) -> None:
    import torch.distributed as dist

    from tests.test_sequence_parallel import objective_for, one_batch, run_step
    from unlearn.sequence_parallel import enable_sequence_parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        spec, objective = objective_for("wan", Path(model), False, 0)
        sp = enable_sequence_parallel(objective)
        ex = exchange(rank, args, sp)
        batch = one_batch(spec, "wan", SHAPE)
        sent = [0]
        real = _count(sent)
        times = []
        for _ in range(args.steps):
            dist.barrier()
            t = time.perf_counter()
            losses, grads = run_step(objective, batch)
            for g in grads.values():
                real["all_reduce"](g)  # the engine's gradient reduction: not the sequence split's traffic
            times.append(time.perf_counter() - t)
        torch.save({"exchange": ex, "times": times, "sent": sent[0] / args.steps, "losses": losses, "grads": grads},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def main() -> None:
    import torch.multiprocessing as mp

    from pipelines.runtime.results_file import RESULTS_DIR, write_results
    from tests.test_sequence_parallel import objective_for, one_batch, run_step
    from tests.test_sharded_backbone import free_port, make_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--results-file", default=str(RESULTS_DIR / "sequence_parallel.json"))
    args = ap.parse_args()
    load = [os.getloadavg()[0]]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        model = str(make_model("wan", Path(tmp)))
        mp.start_processes(step_rank, args=(free_port(), model, args, tmp), nprocs=WORLD, join=True,
                           start_method="spawn")
        got = [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(WORLD)]
        torch.set_num_threads(1)
        spec, objective = objective_for("wan", Path(model), False, 0)
        batch = one_batch(spec, "wan", SHAPE)
        single = []
        for _ in range(args.steps):
            t = time.perf_counter()
            losses, grads = run_step(objective, batch)
            single.append(time.perf_counter() - t)
    load.append(os.getloadavg()[0])
    steady = lambda ts: len(ts[1:]) / sum(ts[1:]) if len(ts) > 1 else len(ts) / sum(ts)  # noqa: E731
    sp_rate = min(steady(g["times"]) for g in got)
    figures = {
        "exchange": got[0]["exchange"],
        "exchange_shape": {"tokens": args.tokens, "heads": args.heads, "head_dim": args.head_dim, "ranks": WORLD},
        "step": {
            "single_steps_per_s": steady(single), "sequence_parallel_steps_per_s": sp_rate,
            "ratio": sp_rate / steady(single), "bytes_per_step_per_rank": max(g["sent"] for g in got),
            "video_tokens": spec.token_layout(batch.x_c.shape[1:]).video_len,
            "max_loss_diff": max(abs(g["losses"]["loss"] - losses["loss"]) for g in got),
            "max_grad_diff": max(float((g["grads"][n] - grads[n]).abs().max()) for g in got for n in grads),
        },
    }
    rec = write_results(args.results_file, figures, settings={"frames_height_width": SHAPE, "steps": args.steps},
                        timings={"wall_s": round(time.time() - t0, 1), "load_average_1min": load})
    print(rec["figures"])


if __name__ == "__main__":
    main()
