"""Does scoring hide behind generation? The evaluation stage's overhead over generation alone.

    OMP_NUM_THREADS=1 python benchmarks/eval_stage.py [--rows 6] [--steps 50] [--size 128] [--frames 9]

On the tiny CogVideoX (real pipeline, real NudeNet scoring every frame, mp4 + GIF written,
paired PSNR/SSIM on every row), in the same process and run:

  generation-only wall  load the pipeline + eraser, generate every row's base and erased
                        video, nothing else
  whole eval wall       `run_eval` end to end into a fresh directory: validation, pipeline
                        load, generation, scoring in the consumer, row files, results.csv,
                        summary, grid
  overhead_fraction     (whole eval wall - generation-only wall) / generation-only wall

The two are measured alternately (`--repeats` evals between repeats+1 generation-only runs);
each eval is compared with the mean of the generation-only runs just before and after it,
and `overhead_fraction` is the median over repeats (other jobs' load drifts during a run on a
shared machine). Scoring can only hide behind generation when a second core is free, so the
1-minute load average is printed with the result.

The default setting (6 rows, 9 frames at 128x128, 50 steps) is chosen so generating one video takes at
least as long as scoring it; both per-video times are printed so this can be checked.
`classifier_frames_per_s` is NudeNet alone (conversion + detection + counting) on the
generated frames. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORDS = ("naked", "nude", "person", "woman", "man", "body", "beach", "room", "street", "standing", "walking",
         "sitting", "photo", "portrait", "painting")


def write_prompts(path: Path, n: int) -> None:
    from unlearn.csvsafe import csv_text

    rows = []
    for i in range(n):
        a, b, c = WORDS[i % 6], WORDS[6 + i % 5], WORDS[11 + i % 4]
        rows.append([f"a {a} {WORDS[3 + i % 3]} {b} in a {c}", 1000 + i, "naked body", "benchmark"])
    path.write_text(csv_text(["prompt", "seed", "concept", "concept_type"], rows))


def make_eraser(model_dir: Path, out: Path) -> Path:
    import torch

    from unlearn.eraser import EraserMeta, EraserSet, save_eraser

    tcfg = json.loads((model_dir / "transformer" / "config.json").read_text())
    n = tcfg["num_layers"]
    es = EraserSet(EraserMeta(hidden_size=tcfg["num_attention_heads"] * tcfg["attention_head_dim"], rank=8,
                              num_blocks=n, block_indices=list(range(n))))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in es.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return save_eraser(es, out)


def generation_only(cfg, plan) -> tuple[float, list]:
    """Wall time of: load pipeline + eraser, generate every row (base + erased). Returns (s, videos)."""
    from eval.generate import generate_pair, load_eval_pipeline
    from unlearn.eraser import load_eraser

    t0 = time.perf_counter()
    pipe = load_eval_pipeline(plan.model_path, cfg.model.dtype, "cpu", cfg.generation)
    handle = load_eraser(pipe, plan.eraser)
    videos = []
    for row in plan.rows:
        videos.append(generate_pair(pipe, handle, row.prompt, row.seed, cfg.generation))
    wall = time.perf_counter() - t0
    handle.remove()
    return wall, videos


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--scorer", default="process", choices=["process", "thread", "inline"])
    ap.add_argument("--repeats", type=int, default=2, help="eval runs (interleaved with repeats+1 generation-only runs)")
    ap.add_argument("--keep", default=None, help="keep outputs in this folder")
    ap.add_argument("--results-file", default="",
                    help="also write the figures to this results file (benchmarks/results/eval_stage.json), which "
                         "docs/benchmarks.md renders; the load average goes with them (the overhead needs a free core)")
    args = ap.parse_args()

    import pipelines.runtime.env as env

    env.apply_offline_env()
    import diffusers.utils.logging as dlog
    import torch

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from eval.classifiers.nudenet import NudeNetClassifier
    from eval.config import EvalConfig
    from eval.generate import to_uint8
    from eval.planning import plan_eval
    from eval.runner import run_eval
    from unlearn.models.registry import resolve_model_path

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="t2vu-bench-eval-"))
    root.mkdir(parents=True, exist_ok=True)
    model = resolve_model_path("builtin:tiny")
    eraser = make_eraser(model, root / "eraser")
    prompts = root / "prompts.csv"
    write_prompts(prompts, args.rows)
    cfg = EvalConfig.model_validate({
        "model": {"path": str(model), "dtype": "float32"},
        "eraser": str(eraser),
        "prompts": {"path": str(prompts)},
        "generation": {"num_inference_steps": args.steps, "num_frames": args.frames, "height": args.size,
                       "width": args.size, "scheduler": "ddim", "vae_tiling": False, "vae_slicing": False},
        "classifier": {"name": "nudenet", "nudenet": {"frames": "all", "threads": 1}},
        "metrics": {"paired_on": "all"},
        "output": {"grid_rows": 8},
        "runtime": {"num_actors": 0, "scorer": args.scorer, "queue_depth": 2, "progress": False},
    })
    plan = plan_eval(cfg, root / "eval-0")

    # warm-up: imports, first-call allocations, ONNX session (not timed)
    clf = NudeNetClassifier(frames="all", threads=1)
    warm, videos = generation_only(cfg.with_overrides({"generation.num_inference_steps": 2}), plan)

    # Alternate generation-only and whole-eval runs; the minimum of each is the least
    # disturbed sample when other jobs share the machine (all samples are printed too).
    gen_runs, eval_runs, summary = [], [], None
    for rep in range(args.repeats):
        g, videos = generation_only(cfg, plan)
        gen_runs.append(g)
        t0 = time.perf_counter()
        summary = run_eval(cfg, root / f"eval-{rep}")
        eval_runs.append(time.perf_counter() - t0)
    g, _ = generation_only(cfg, plan)
    gen_runs.append(g)
    # Each eval against the mean of the generation-only runs just before and after it; the
    # median over repeats (robust to other jobs' load drifting during the benchmark).
    ratios = sorted(e / ((gen_runs[i] + gen_runs[i + 1]) / 2) - 1 for i, e in enumerate(eval_runs))
    overhead = ratios[len(ratios) // 2] if len(ratios) % 2 else sum(ratios[len(ratios) // 2 - 1:][:2]) / 2
    gen_wall, eval_wall = min(gen_runs), min(eval_runs)

    # classifier alone on the generated frames (as the consumer sees them: uint8 -> float)
    frames = [to_uint8(v).astype("float32") / 255.0 for pair in videos for v in pair]
    t0 = time.perf_counter()
    n_frames = 0
    for f in frames:
        clf.classify(f, {})
        n_frames += len(f)
    clf_s = time.perf_counter() - t0
    n_videos = 2 * len(plan.rows)
    score_per_video = sum(json.loads(p.read_text())["score_seconds"]
                          for p in (root / "eval-0" / "rows").glob("*.json")) / n_videos

    result = {
        "overhead_fraction": round(overhead, 4),
        "overhead_fraction_min_walls": round((eval_wall - gen_wall) / gen_wall, 4),
        "overhead_fraction_per_repeat": [round(r, 4) for r in ratios],
        "classifier_frames_per_s": round(n_frames / clf_s, 2),
        "eval_wall_s": round(eval_wall, 3),
        "generation_only_wall_s": round(gen_wall, 3),
        "generation_only_runs_s": [round(x, 3) for x in gen_runs],
        "eval_runs_s": [round(x, 3) for x in eval_runs],
        "gen_per_video_s": round(gen_wall / n_videos, 3),
        "score_per_video_s": round(score_per_video, 3),
        "rows": len(plan.rows),
        "videos": n_videos,
        "setting": {"frames": args.frames, "size": args.size, "steps": args.steps, "scorer": args.scorer,
                    "nudenet_frames": "all", "paired_metrics": "all rows", "mp4+gif": True},
        "rows_evaluated": summary["rows_evaluated"],
        "cpu_count": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))
    if args.results_file:
        from pipelines.runtime.results_file import write_results

        keys = ("overhead_fraction", "overhead_fraction_min_walls", "overhead_fraction_per_repeat",
                "classifier_frames_per_s", "gen_per_video_s", "score_per_video_s", "rows", "videos", "loadavg_1m")
        write_results(args.results_file, {**{k: result[k] for k in keys}, "target": 0.10},
                      settings={**result["setting"], "cpu_count": result["cpu_count"]},
                      timings={k: result[k] for k in ("eval_wall_s", "generation_only_wall_s",
                                                      "generation_only_runs_s", "eval_runs_s")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
