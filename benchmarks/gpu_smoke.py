"""GPU smoke check through the real entry points: `t2vu plan`, `t2vu train`, `train --distributed`, `t2vu eval`, `t2vu tune`.

    bash benchmarks/gpu_smoke.sh                              # GPU machine: CogVideoX-2B shape, < 5 minutes
    python benchmarks/gpu_smoke.py --preset tiny --device cpu # the same sequence on a CPU (tests)

Stages (each a separate process, so each starts with a clean GPU; logs under WORKDIR/logs):
1. build: a model directory in the real diffusers layout with random weights
   (`benchmarks/smoke_stages.py build`: the public 2B transformer config in bf16, the public VAE config,
   a 1-layer T5 with T5-XXL's width 4096 -- T5-XXL itself is 4.76B parameters -- the offline tokenizer);
2. plan: `t2vu plan` for each training below (its JSON line: the predicted peak per GPU);
3. train: `t2vu train` single process on the shipped `configs/cogvideox-2b-nudity.yaml` with
   `xt_source: trajectory` (2 sampler steps, pool 1), bf16, gradient checkpointing, `train.device`,
   `--steps` steps; its summary gives the steady step time and the process's peak memory;
4. distributed (>= 2 GPUs, or always with `--device cpu`): the same config under Ray Train +
   DeepSpeed ZeRO-2 on 2 workers (`smoke_stages.py distributed` = `t2vu train --distributed` plus a
   step hook that records each rank's peak memory); then `sharded` (>= 2 GPUs; a CPU: `--sharded on`;
   else one `skipped` line): the same with `distributed.shard_backbone: true` (the frozen backbone in FSDP2
   shards over the 2 GPUs), each rank's peak next to the plan's;
5. eval: `t2vu eval` on the shipped `configs/eval/cogvideox-2b-nudity.yaml`, 2 rows (1 target, 1 preserve)
   with the trained eraser (base + erased video per row), `--eval-steps` sampler steps;
6. search (`--no-search` skips it): `t2vu plan --mode tune` and `t2vu tune` on the shipped
   `configs/search/cogvideox-2b-nudity-gpu.yaml`, one trial of 1 worker, which trains in the trial's own actor on
   its GPU (pipelines/search/trial_training.py): a proxy eval every `steps // 2` steps on the training
   transformer (the plan's usual peak phase), then the trial's final eval after training, on the same GPU
   once the training session is released; each eval's peak GPU memory
   (`workers[].peak_memory_gb` of its summary.json) next to the plan's prediction.
Before any stage runs it prints each stage's FLOP/time budget (`[gpu_smoke] budget ...` on stderr; FLOPs from
`pipelines.plan.flops`, time at `--mfu` x `--peak-tflops` plus an assumed start-up per stage) and sizes the eval
and search stages to fit 5 minutes by it (`benchmarks/smoke_budget.py`).
Prints ONE JSON line (everything else goes to stderr and the logs): step time, peak memory per GPU
next to the plan's prediction, MFU, eval seconds per video, the budget next to the stage seconds.

MFU counts model FLOPs of the fused step (no recompute, no attention capture): per row and block,
linear layers 2*N*12*D^2 and attention 4*N^2*D in the forward; rows with grad add their backward,
which for a frozen backbone is the activation gradient only (linear 1x, attention 2x the forward),
so a grad row costs linear 2x + attention 3x. Over the dense bf16 peak (`--peak-tflops`,
default 989 for H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smoke_distributed import STAGE_DIR, run_dist, run_sharded, stage_overrides

ROOT = Path(__file__).resolve().parent.parent
TRAIN_CONFIG = ROOT / "configs" / "cogvideox-2b-nudity.yaml"
SEARCH_CONFIG = ROOT / "configs" / "search" / "cogvideox-2b-nudity-gpu.yaml"
EVAL_CONFIG = ROOT / "configs" / "eval" / "cogvideox-2b-nudity.yaml"
PROMPTS = ROOT / "examples" / "prompts" / "nudity_example.csv"
PRESERVE = ROOT / "examples" / "prompts" / "preserve_example.csv"
WAN_TRAIN_CONFIG = ROOT / "configs" / "wan" / "wan2.1-t2v-1.3b-nudity.yaml"
GEOMETRY = {"cogvideox-2b": dict(frames=49, height=480, width=720), "tiny": dict(frames=9, height=32, width=32),
            "wan2.1-t2v-1.3b": dict(frames=81, height=480, width=832), "tiny-wan": dict(frames=9, height=32, width=32)}
ERASER_RANK = {"cogvideox-2b": 128, "tiny": 8, "wan2.1-t2v-1.3b": 128, "tiny-wan": 8}
FAMILY = {"cogvideox-2b": "cogvideox", "tiny": "cogvideox", "wan2.1-t2v-1.3b": "wan", "tiny-wan": "wan"}


def model_flops(cfg: dict, video_tokens: int, rows_nograd: int, rows_grad: int, text_tokens: int | None = None) -> float:
    """Model FLOPs of one fused step (see the module docstring); `cfg` is transformer/config.json."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    if "ffn_dim" in cfg:  # Wan: self-attention over video, cross-attention video -> text, FFN of width ffn_dim
        nv, nt, f = video_tokens, int(text_tokens), cfg["ffn_dim"]
        linear = 2 * (nv * (4 * d * d + 2 * d * d + 2 * d * f) + nt * 2 * d * d)  # self qkvo, cross q/o + k/v, FFN
        attention = 4 * nv * nv * d + 4 * nv * nt * d
        return cfg["num_layers"] * (rows_nograd * (linear + attention) + rows_grad * (2 * linear + 3 * attention))
    n = video_tokens + cfg["max_text_seq_length"]
    linear = 2 * n * 12 * d * d  # qkv + out (4 D^2) + feed-forward D -> 4D -> D (8 D^2)
    attention = 4 * n * n * d  # q k^T and p v
    layers = cfg["num_layers"]
    return layers * (rows_nograd * (linear + attention) + rows_grad * (2 * linear + 3 * attention))


def video_tokens(cfg: dict, frames: int, height: int, width: int, vae_spatial: int, vae_temporal: int) -> int:
    p = cfg["patch_size"]
    pt, ph, pw = p if isinstance(p, (list, tuple)) else (1, p, p)  # Wan: (1, 2, 2)
    return -(-((frames - 1) // vae_temporal + 1) // pt) * (height // vae_spatial // ph) * (width // vae_spatial // pw)


class Stages:
    """Runs each stage as a subprocess; its output goes to WORKDIR/logs/<name>.log."""

    def __init__(self, workdir: Path, env: dict[str, str], timeout: float):
        self.workdir, self.env, self.timeout = workdir, env, timeout
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}

    def run(self, name: str, argv: list[str], ok_codes: tuple[int, ...] = (0,)) -> str:
        log = self.logs / f"{name}.log"
        print(f"[gpu_smoke] {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        with open(log, "w") as f:
            r = subprocess.run(argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=f, text=True,
                               timeout=self.timeout)
            f.write("\n--- stdout ---\n" + r.stdout)
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        if r.returncode not in ok_codes:
            tail = log.read_text()[-4000:]
            raise SystemExit(f"[gpu_smoke] stage {name} failed (exit {r.returncode}); log {log}:\n{tail}")
        return r.stdout


def last_json(stdout: str) -> dict:
    """The last line of `stdout` that is a JSON object (t2vu plan's contract; our stages print one)."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{") and line.endswith("}"):
            return json.loads(line)
    raise ValueError(f"no JSON line in: {stdout[-1000:]}")


def train_overrides(a, model_dir: Path, cache: Path) -> list[str]:
    g = GEOMETRY[a.preset]
    sets = {"model.family": FAMILY[a.preset]} if FAMILY[a.preset] != "cogvideox" else {}
    sets |= {
        "model.path": str(model_dir), "model.dtype": "bfloat16",
        "model.num_frames": g["frames"], "model.height": g["height"], "model.width": g["width"],
        "eraser.rank": ERASER_RANK[a.preset],
        "concept.prompts": json.dumps(["a naked body", "a naked woman"]),
        "concept.preserve": json.dumps(["a person", "a face"]),
        "train.steps": a.steps, "train.batch_size": 1, "train.preserve_batch_size": 1,
        "train.xt_source": "trajectory", "train.trajectory.num_inference_steps": 2, "train.trajectory.pool_size": 1,
        "train.gradient_checkpointing": True, "train.autocast": "bf16", "train.device": a.device,
        "train.checkpoint_every": 10**6, "train.log_every": 1, "train.cache_dir": str(cache),
    }
    if a.mask_layers is not None:
        sets["loss.mask_layers"] = json.dumps(a.mask_layers)
    return [f"{k}={v}" for k, v in sets.items()]


def eval_overrides(a, model_dir: Path) -> list[str]:
    return [f"{k}={v}" for k, v in eval_settings(a, model_dir).items()]


def eval_settings(a, model_dir: Path) -> dict:
    g = GEOMETRY[a.preset]
    cuda = a.device.startswith("cuda")
    sets = {
        "model.path": str(model_dir), "model.dtype": "bfloat16",
        "preserve.path": str(PRESERVE), "preserve.with_cli_prompts": True, "preserve.prompt_column": "prompt", "preserve.seed_column": "seed",
        "generation.num_inference_steps": a.eval_steps, "generation.num_frames": g["frames"],
        "generation.height": g["height"], "generation.width": g["width"],
        "generation.scheduler": "ddim" if FAMILY[a.preset] == "cogvideox" else "model",  # Wan: its flow scheduler
        "generation.vae_tiling": cuda,  # the real VAE's tiling assumes real frame sizes
        "classifier.nudenet.frames": 8,
        # random weights draw no pictures: the stage's degenerate-video verdict would fail the run
        "checks.max_degenerate_fraction": 1.0,
        # one Ray GPU actor = the path of the real config (8 actors); in-process on a CPU
        "runtime.num_actors": 1 if cuda else 0, "runtime.use_gpu": cuda, "runtime.cpus_per_actor": 2,
    }
    return sets


def search_overrides(a, model_dir: Path, out: Path) -> list[str]:
    """One trial of the shipped GPU search with 1 worker (trained in the trial's actor, on its GPU), proxy evals on
    the training transformer every `steps // 2` steps, then the trial's final eval after training (in the same
    actor, on its GPU). 1 row per set, `--eval-steps` sampler steps, the preset's geometry."""
    cuda = a.device.startswith("cuda")
    ev = {k: v for k, v in eval_settings(a, model_dir).items()
          if not k.startswith("runtime.") and k not in ("model.path", "preserve.with_cli_prompts")}
    ev.update({"prompts.path": str(PROMPTS), "prompts.prompt_column": "prompt", "prompts.seed_column": "seed"})
    sets = {
        "distributed.num_workers": 1, "distributed.use_gpu": cuda, "distributed.zero_stage": 2,
        "distributed.resources_per_worker": json.dumps({"CPU": 2, "GPU": 1} if cuda else {"CPU": 1}),
        "distributed.storage_path": str(out / "ray"), "distributed.max_failures": 0,
        "train.device": "cuda" if cuda else "cpu",
        # ASHA: the one scheduler that reads proxy evals (the shipped multi-objective Optuna skips them), so
        # the smoke still runs the proxy path in the training worker that an ASHA search depends on.
        "search.algorithm": "asha",
        "search.num_samples": 1, "search.max_concurrent_trials": 1, "search.resources_per_trial": json.dumps({"CPU": 1}),
        "search.space": json.dumps({"train.lr": {"loguniform": [1e-4, 2e-4]}}),
        "search.objective.eval_overrides": json.dumps(ev),
        "search.objective.limit": 1,
        "search.objective.proxy.every": a.proxy_every, "search.objective.proxy.limit": 1,
        "search.objective.proxy.overrides": json.dumps({"generation.num_inference_steps": a.eval_steps}),
    }
    return [f"{k}={v}" for k, v in sets.items()]


def search_result(out: Path) -> dict:
    """The trial's proxy and final evals as the search left them on disk."""
    proxies = sorted(out.glob("trials/*/proxy/step_*/summary.json"))
    finals = sorted(out.glob("trials/*/eval/summary.json"))
    res: dict = {"proxy_evals": len(proxies), "final_evals": len(finals)}
    if proxies:
        ps = json.loads(proxies[-1].read_text())
        w = ps.get("workers") or [{}]
        res.update(proxy_rows=ps.get("rows_total"), proxy_wall_s=ps.get("wall_seconds"),
                   proxy_device=w[0].get("device"), proxy_peak_memory_gb=w[0].get("peak_memory_gb"))
    if finals:
        fs = json.loads(finals[-1].read_text())
        res.update(final_rows=fs.get("rows_total"), final_wall_s=fs.get("wall_seconds"),
                   final_workers=[{k: w.get(k) for k in ("device", "peak_memory_gb")} for w in fs.get("workers", [])])
    return res


def sets(overrides: list[str]) -> list[str]:
    return [x for kv in overrides for x in ("--set", kv)]


def vae_factors(model_dir: Path, family: str = "cogvideox") -> tuple[int, int]:
    if family == "wan":
        from unlearn.models.wan import vae_factors as read
    else:
        from unlearn.models.cogvideox import vae_factors as read

    return read(model_dir)


def count_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--preset", choices=list(GEOMETRY), default="cogvideox-2b",
                    help="cogvideox-2b | wan2.1-t2v-1.3b (GPU, public shapes, random weights) | tiny | tiny-wan (CPU)")
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (train.device of both trainings)")
    ap.add_argument("--steps", type=int, default=4, help="training steps of each training (the first is warm-up)")
    ap.add_argument("--eval-steps", type=int, default=4, help="sampler steps per eval video")
    ap.add_argument("--mask-layers", type=int, nargs="*", default=None,
                    help="loss.mask_layers (default: the config's, all blocks)")
    ap.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                    help="auto: on with >= 2 GPUs, and on a CPU (2 gloo workers)")
    ap.add_argument("--sharded", choices=("auto", "on", "off"), default="auto",
                    help="the 2-worker run again with distributed.shard_backbone (FSDP2); auto: on with >= 2 GPUs")
    ap.add_argument("--search", action=argparse.BooleanOptionalAction, default=None,
                    help="run one trial of the GPU search config (proxy evals in the training worker, final eval after "
                         "fit); default: when the budget leaves room for it")
    ap.add_argument("--mfu", type=float, default=0.4, help="utilisation the budget assumes (t2vu plan's --mfu)")
    ap.add_argument("--workdir", default=None, help="default: a new temporary folder")
    ap.add_argument("--stage-timeout", type=float, default=900.0)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    a = ap.parse_args()

    t_start = time.perf_counter()
    cuda = a.device.startswith("cuda")
    gpus = count_gpus()
    if cuda and not gpus:
        raise SystemExit("[gpu_smoke] --device cuda but no CUDA GPU is visible; use --preset tiny --device cpu")
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="t2vu-gpu-smoke-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "T2VU_CACHE": str(workdir / "cache")}
    if not cuda:
        env.setdefault("DS_ACCELERATOR", "cpu")
    st = Stages(workdir, env, a.stage_timeout)
    py, t2vu = [sys.executable], [sys.executable, "-m", "pipelines.cli.entry"]
    model_dir = workdir / "model"
    family = FAMILY[a.preset]
    train_config = TRAIN_CONFIG if family == "cogvideox" else WAN_TRAIN_CONFIG
    single = train_overrides(a, model_dir, workdir / "cache")
    build = py + ["benchmarks/smoke_stages.py", "build", "--preset", a.preset, "--out", str(model_dir), "--device", a.device]
    from unlearn.models.architectures import PRESETS

    if a.preset not in PRESETS:  # a tiny model: its architecture comes from the build (seconds)
        st.run("build", build)
    plan_budget = budget_before_running(a, model_dir, train_config, single, gpus, cuda, workdir)
    if a.preset in PRESETS:
        st.run("build", build)
    tcfg = json.loads((model_dir / "transformer" / "config.json").read_text())
    from unlearn.models.families import spec_class

    text_len = spec_class(family).text_len_of(model_dir)
    gpu_mem = [] if cuda else ["--gpu-memory", "80"]  # a CPU has no GPU memory to detect: plan for an 80 GB card
    plan = last_json(st.run("plan", t2vu + ["plan", "--config", str(train_config), "--mode", "train", *gpu_mem,
                                            *sets(single)], ok_codes=(0, 3)))
    train_out = workdir / "train"
    st.run("train", t2vu + ["train", "--config", str(train_config), "--output", str(train_out), "--no-resume",
                            *sets(single)])
    summary = json.loads((train_out / "summary.json").read_text())
    g = GEOMETRY[a.preset]
    nv = video_tokens(tcfg, g["frames"], g["height"], g["width"], *vae_factors(model_dir, family))
    flops = model_flops(tcfg, nv, rows_nograd=3, rows_grad=2, text_tokens=text_len)  # B=1 concept + 1 reference + P=1; grad: B + P
    step_s = summary.get("step_s")
    result: dict = {
        "preset": a.preset, "family": family, "device": a.device, "gpus": gpus,
        "video_tokens": nv, "text_tokens": text_len,
        "train": {
            "step_s": step_s, "peak_memory_gb": summary.get("peak_memory_gb"),
            "plan_allocated_peak_gb": plan.get("allocated_peak_gb"), "plan_peak_gb_per_gpu": plan.get("peak_gb_per_gpu"),
            "plan_fits": plan.get("fits"), "plan_peak_phase": plan.get("peak_phase"),
            "model_tflops_per_step": round(flops / 1e12, 2),
            "mfu": round(flops / step_s / (a.peak_tflops * 1e12), 4) if cuda and step_s else None,
            "final": summary.get("final"), "finite": _finite(summary.get("final", {})), "wall_s": summary.get("wall_s"),
        },
    }

    result["budget"] = plan_budget
    for name, on in (("distributed", run_dist(a, gpus, cuda)), ("sharded", run_sharded(a, gpus, cuda))):
        if on:
            result[name] = distributed_stage(st, name, train_config, single + stage_overrides(a, name, workdir), gpu_mem)
        else:
            why = f"--{name} off" if getattr(a, name) == "off" else f"{gpus} GPU(s): the 2-worker run needs >= 2"
            result[name] = {"skipped": why}
            print(f"[gpu_smoke] {name}: skipped ({why})", file=sys.stderr, flush=True)

    eval_out = workdir / "eval"
    st.run("eval", t2vu + ["eval", "--config", str(EVAL_CONFIG), "--output", str(eval_out), "--no-progress",
                           "--prompts", str(PROMPTS), "--limit", "1", "--eraser", str(train_out / "eraser"),
                           *sets(eval_overrides(a, model_dir))])
    es = json.loads((eval_out / "summary.json").read_text())
    videos = 2 * int(es.get("rows_total", 0))  # base + erased per row
    gen_total = float(es.get("generation_seconds_total") or 0.0)
    result["eval"] = {
        "rows": es.get("rows_total"), "videos": videos,
        "seconds_per_video": round(gen_total / videos, 3) if videos else None,
        "wall_s": es.get("wall_seconds"), "timing": es.get("timing"),
    }
    if a.search and family != "cogvideox":
        result["search"] = {"skipped": f"the shipped GPU search config is CogVideoX's; {a.preset} runs train and eval"}
    elif a.search:
        sdir = workdir / "search"
        search = single + search_overrides(a, model_dir, sdir)
        splan = last_json(st.run("plan_search", t2vu + ["plan", "--config", str(SEARCH_CONFIG), "--mode", "tune",
                                                       "--world-size", "1", *gpu_mem, *sets(search)], ok_codes=(0, 3)))
        st.run("search", t2vu + ["tune", "--config", str(SEARCH_CONFIG), "--output", str(sdir), *sets(search)])
        result["search"] = {**search_result(sdir), "plan_allocated_peak_gb": splan.get("allocated_peak_gb"),
                            "plan_peak_gb_per_gpu": splan.get("peak_gb_per_gpu"),
                            "plan_peak_phase": splan.get("peak_phase")}
    else:
        result["search"] = {"skipped": "--no-search, or left out to fit the budget (see budget)"}
    result["gpu_name"] = _gpu_name() if cuda else "cpu"  # only now: the driver never holds a CUDA context
    result["stage_seconds"] = st.seconds
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    result["workdir"] = str(workdir)
    srch = result["search"]
    search_ok = "skipped" in srch or (srch.get("proxy_evals", 0) >= 1 and srch.get("final_evals", 0) == 1)
    result["ok"] = (result["train"]["finite"] and result["distributed"].get("finite", True)
                    and result["sharded"].get("finite", True) and videos == 4 and search_ok)
    print(json.dumps(result))


def distributed_stage(st, name: str, train_config: Path, dist: list[str], gpu_mem: list[str]) -> dict:
    """`t2vu plan` for the 2-worker run, then the run (`smoke_stages.py distributed`): its step time, each rank's
    peak memory next to the plan's."""
    py, t2vu, out = [sys.executable], [sys.executable, "-m", "pipelines.cli.entry"], st.workdir / STAGE_DIR[name]
    dplan = last_json(st.run(f"plan_{name}", t2vu + ["plan", "--config", str(train_config), "--mode", "distributed",
                                                     "--world-size", "2", *gpu_mem, *sets(dist)], ok_codes=(0, 3)))
    st.run(name, py + ["benchmarks/smoke_stages.py", "distributed", "--config", str(train_config), "--output", str(out),
                       "--peaks", str(out / "peaks"), *sets(dist)])
    dsum = json.loads((out / "summary.json").read_text())
    per_rank = [json.loads(p.read_text()) for p in sorted((out / "peaks").glob("rank*.json"))]
    rate = dsum.get("steps_per_s_steady") or dsum.get("steps_per_s")
    return {
        "world_size": dsum.get("world_size"), "zero_stage": dsum.get("zero_stage"),
        "shard_backbone": dsum.get("shard_backbone", False), "step_s": round(1 / rate, 4) if rate else None,
        "ms_per_step": dsum.get("ms_per_step"),
        "peak_memory_gb_per_rank": [r["peak_memory_gb"] and round(r["peak_memory_gb"], 3) for r in per_rank],
        "plan_allocated_peak_gb": dplan.get("allocated_peak_gb"), "plan_peak_gb_per_gpu": dplan.get("peak_gb_per_gpu"),
        "final": dsum.get("final"), "finite": _finite(dsum.get("final", {})), "wall_s": dsum.get("wall_s"),
    }


def budget_before_running(a, model_dir: Path, train_config: Path, single: list[str], gpus: int, cuda: bool,
                          workdir: Path) -> dict:
    """Each stage's FLOP/time budget, printed before the stages run; eval/search sized to fit (benchmarks/smoke_budget.py)."""
    from smoke_budget import render, size_to_fit

    from unlearn.models.architectures import PRESETS, resolve_architecture

    arch = resolve_architecture(str(model_dir), a.preset if a.preset in PRESETS else None)
    dist = single + stage_overrides(a, "distributed", workdir) if run_dist(a, gpus, cuda) else None
    sharded = single + stage_overrides(a, "sharded", workdir) if run_sharded(a, gpus, cuda) else None
    a.proxy_every = max(1, a.steps // 2)
    forced = a.search
    a.search = a.search is not False and FAMILY[a.preset] == "cogvideox"  # the shipped GPU search is CogVideoX's
    say = lambda m: print(f"[gpu_smoke] {m}", file=sys.stderr, flush=True)  # noqa: E731
    b = size_to_fit(a, arch, train_config, single, dist, GEOMETRY[a.preset], say, keep_search=forced is True,
                    sharded=sharded)
    for line in render(b):
        say(line)
    a.search = a.search or forced is True
    return {**b, "eval_steps": a.eval_steps, "search_proxies": a.search_proxies, "search": a.search}


def _finite(final: dict) -> bool:
    vals = [v for v in final.values() if isinstance(v, (int, float))]
    return bool(vals) and all(v == v and abs(v) != float("inf") for v in vals)


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name()


if __name__ == "__main__":
    main()
