"""What a one-worker Tune trial costs with and without a Ray Train worker group (pipelines/search/trial_training.py).

    OMP_NUM_THREADS=1 python benchmarks/trial_overhead.py [--trials 2] [--repeats 2] \
        [--results-file benchmarks/results/trial_overhead.json]

The same `t2vu tune` (configs/search/tiny.yaml: the tiny CogVideoX, 8 steps, one worker per trial, the final eval on
1+1 rows, MLflow off), run as a user runs it, into a fresh folder each time, two ways:

  in_trial       the default: a one-worker trial trains in the Tune trial's own actor
  worker_group   the same search with a no-op DeepSpeed override (`steps_per_print`), which keeps each trial's
                 Ray Train worker group (TorchTrainer: controller, worker and helper actors)

For each: the wall time of the command, and the machine's busy CPU seconds over it (/proc/stat: the command, its
Ray cluster, every actor and worker, together), the median over `--repeats` alternating runs. Both start their own
local Ray, so that start is in both figures. The box should be otherwise idle (CPU-s are less sensitive to other load
than wall time, not immune). The ratio `cpu_s_ratio` = worker_group / in_trial; the per-trial saving divides the
difference by `--trials`. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KEEP_WORKER_GROUP = "distributed.deepspeed_overrides={steps_per_print: 1000000}"  # no-op for training


def busy_cpu_s() -> float:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def search_args(trials: int) -> list[str]:
    sets = {"search.num_samples": trials, "distributed.num_workers": 1, "train.steps": 8, "train.checkpoint_every": 8,
            "train.batch_size": 1, "train.preserve_batch_size": 1, "search.objective.limit": 1,
            "mlflow.enabled": "false"}
    out = []
    for k, v in sets.items():
        out += ["--set", f"{k}={v}"]
    return out


def one_run(way: str, trials: int, root: Path, i: int) -> dict:
    out = root / f"{way}-{i}"
    cmd = [sys.executable, "-m", "pipelines.cli.entry", "tune", "-c", str(REPO / "configs" / "search" / "tiny.yaml"),
           "-o", str(out), *search_args(trials)]
    if way == "worker_group":
        cmd += ["--set", KEEP_WORKER_GROUP]
    env = {**os.environ, "RAY_ADDRESS": "", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    c0, t0 = busy_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, busy_cpu_s() - c0
    if proc.returncode != 0:
        raise SystemExit(f"{way} run {i} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    done = sorted(p.name for p in (out / "trials").iterdir() if (p / "summary.json").exists())
    if len(done) != trials:
        raise SystemExit(f"{way} run {i}: {len(done)} of {trials} trials finished")
    in_actor = all(not (p / "checkpoint_path.txt").exists() for p in (out / "trials").iterdir())
    if in_actor != (way == "in_trial"):
        raise SystemExit(f"{way} run {i}: the trials did not train where this way says (in their actor: {in_actor})")
    return {"wall_s": wall, "cpu_s": cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--results-file", default="", help="also write the figures here (benchmarks/results/trial_overhead.json)")
    args = ap.parse_args()

    runs: dict[str, list[dict]] = {"in_trial": [], "worker_group": []}
    with tempfile.TemporaryDirectory(prefix="t2vu-trial-overhead-") as tmp:
        for i in range(args.repeats):
            for way in (("in_trial", "worker_group") if i % 2 == 0 else ("worker_group", "in_trial")):
                r = one_run(way, args.trials, Path(tmp), i)
                runs[way].append(r)
                print(f"{way} run {i}: {r['cpu_s']:.1f} CPU-s, {r['wall_s']:.1f} s wall", file=sys.stderr, flush=True)
    med = {w: {k: statistics.median(r[k] for r in rs) for k in ("cpu_s", "wall_s")} for w, rs in runs.items()}
    figures = {
        "trials": args.trials,
        "in_trial_cpu_s": round(med["in_trial"]["cpu_s"], 1),
        "worker_group_cpu_s": round(med["worker_group"]["cpu_s"], 1),
        "cpu_s_ratio": round(med["worker_group"]["cpu_s"] / med["in_trial"]["cpu_s"], 2),
        "cpu_s_saved_per_trial": round((med["worker_group"]["cpu_s"] - med["in_trial"]["cpu_s"]) / args.trials, 1),
        "in_trial_wall_s": round(med["in_trial"]["wall_s"], 1),
        "worker_group_wall_s": round(med["worker_group"]["wall_s"], 1),
        "wall_s_ratio": round(med["worker_group"]["wall_s"] / med["in_trial"]["wall_s"], 2),
    }
    settings = {"config": "configs/search/tiny.yaml", "repeats": args.repeats, "sets": search_args(args.trials),
                "worker_group_set": KEEP_WORKER_GROUP, "load_avg_1min_end": round(os.getloadavg()[0], 2)}
    if args.results_file:
        from pipelines.runtime.results_file import write_results

        write_results(args.results_file, figures, settings=settings, timings={"runs": runs})
    print(json.dumps({"figures": figures, "settings": settings}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
