"""The GPU smoke check's budget: each stage's FLOPs and time before it runs, and the eval/search sizing that fits it.

`benchmarks/gpu_smoke.py` prints one `[gpu_smoke] budget <stage>: ...` line per stage (stderr) and the total against
the target (5 minutes on one H100) before running anything, and puts the same numbers in its JSON line.

FLOPs are `pipelines.plan.flops` (through `pipelines.plan.search_cost.step_flops` / `video_flops`, the search cost's
own counts): training = steps x one worker's fused step (forward 1, the attention capture at fp32 speed, forward 2,
the checkpointing recompute, the frozen backward, the erasers) + the trajectory pool's sampling; an eval video =
sampler steps x a CFG forward of 2 rows + text encoding + the VAE decode estimate; the search trial = its training,
its proxy evals and its final eval (base + erased video per row). Time = FLOPs / (MFU x the GPU's bf16 peak), the
search cost's assumption (0.4 x 989 TFLOP/s by default), plus a start-up allowance per stage (STARTUP_S: process,
imports, reading the model, Ray/DeepSpeed start) that is ASSUMED, not measured -- no GPU run has timed it yet.

Sizing (`size_to_fit`): while the total is over the target, the eval sampler steps come down to 2, then the search
stage's proxy evals to 1, then the search stage is left out -- each step said in one line. Train and distributed
stages keep their settings (they are what the smoke measures).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

TARGET_S = 300.0  # issue 22: the smoke finishes on one offline H100 in <= 5 minutes by its own count
# Assumed start-up seconds per stage (not measured: no GPU run yet): python + torch + diffusers imports, reading the
# 3.4 GB bf16 2B transformer (and the VAE / 1-layer T5 where the stage loads them), Ray and DeepSpeed start-up.
STARTUP_S = {"build": 40.0, "plan": 5.0, "train": 25.0, "plan_distributed": 5.0, "distributed": 40.0, "plan_sharded": 5.0,
             "sharded": 40.0, "eval": 25.0, "plan_search": 5.0, "search": 45.0}
EVAL_GUIDANCE = 6.0  # configs/eval/cogvideox-2b-nudity.yaml generation.guidance_scale (CFG: 2 rows a step)


def _request(config: Path, overrides: list[str], world: int):
    from pipelines.plan.memory_check import load_plan_config, make_request

    method, pipeline = load_plan_config(config, overrides)
    mode = "train" if world == 1 else "distributed"
    return make_request(method, pipeline, config_dir=config.parent, mode=mode, world_size=world, gpu_memory_gb=80)


def training_flops(config: Path, overrides: list[str], world: int, arch) -> float:
    """One worker's training: steps x its fused step + its share of the trajectory pool's sampling."""
    from pipelines.plan import flops as F
    from pipelines.plan.memory_check import trajectory_shape
    from pipelines.plan.search_cost import step_flops

    req = _request(config, overrides, world)
    m = req.method
    total = m.train.steps * sum(step_flops(req, arch).values())
    if m.train.xt_source == "trajectory":
        tr = trajectory_shape(m, req)
        nv, _ = arch.token_counts(m.model.num_frames, m.model.height, m.model.width)
        total += tr.prompts * tr.steps * F.forward_flops(arch, nv, 2 * tr.pool_size)
    return total


def video_flops(arch, frames: int, height: int, width: int, steps: int) -> float:
    from pipelines.plan.search_cost import video_flops as vf

    gen = SimpleNamespace(num_frames=frames, height=height, width=width, num_inference_steps=steps,
                          guidance_scale=EVAL_GUIDANCE)
    return sum(vf(arch, arch.parameter_counts()["text_encoder"], gen).values())


def proxies(steps: int, every: int) -> int:
    """Proxy evals of a trial (one every `every` steps, none on the last): as pipelines.plan.search_cost counts them."""
    return len(range(every, steps, every))


def budget(a, arch, stages: dict[str, float], rate: float) -> dict:
    """{stage: {tflop, compute_s, startup_s, budget_s}} and the total, for FLOPs per stage `stages`."""
    out = {name: {"tflop": float(f"{fl / 1e12:.4g}"), "compute_s": round(fl / rate, 1), "startup_s": STARTUP_S[name],
                  "budget_s": round(fl / rate + STARTUP_S[name], 1)} for name, fl in stages.items()}
    return {"stages": out, "total_s": round(sum(v["budget_s"] for v in out.values()), 1), "target_s": TARGET_S,
            "mfu": a.mfu, "peak_tflops": a.peak_tflops}


def stage_flops(a, arch, train_config: Path, single: list[str], dist: list[str] | None, search: bool,
                geometry: dict, sharded: list[str] | None = None) -> dict[str, float]:
    """FLOPs of each stage the smoke will run (build and plans: none counted, start-up only). `sharded`: the
    2-worker run with the backbone sharded (the same FLOPs as `distributed`; its all-gathers are not counted)."""
    video = video_flops(arch, geometry["frames"], geometry["height"], geometry["width"], a.eval_steps)
    out = {"build": 0.0, "plan": 0.0, "train": training_flops(train_config, single, 1, arch)}
    if dist is not None:
        out.update(plan_distributed=0.0, distributed=training_flops(train_config, dist, 2, arch))
    if sharded is not None:
        out.update(plan_sharded=0.0, sharded=training_flops(train_config, sharded, 2, arch))
    out["eval"] = 2 * 2 * video  # 2 rows (1 target, 1 preserve), base + erased video each
    if search:
        # one trial, 1 worker, 1 row per set: its training, proxy_evals x 2 rows, the final eval's 2 rows x base + erased
        out.update(plan_search=0.0, search=out["train"] + a.search_proxies * 2 * video + 2 * 2 * video)
    return out


def size_to_fit(a, arch, train_config: Path, single: list[str], dist: list[str] | None, geometry: dict,
                say, keep_search: bool = False, sharded: list[str] | None = None) -> dict:
    """The budget after shrinking eval steps, then proxy evals, then dropping the search (unless `keep_search`: the
    user asked for it), until it fits. Sets a.eval_steps, a.proxy_every, a.search_proxies, a.search."""
    rate = a.mfu * a.peak_tflops * 1e12
    a.search_proxies = proxies(a.steps, a.proxy_every)

    def current():
        return budget(a, arch, stage_flops(a, arch, train_config, single, dist, a.search, geometry, sharded), rate)

    b = current()
    while b["total_s"] > TARGET_S and a.eval_steps > 2:
        a.eval_steps -= 1
        b = current()
        say(f"budget over {TARGET_S:g} s: --eval-steps {a.eval_steps}")
    if b["total_s"] > TARGET_S and a.search and a.search_proxies > 1:
        a.proxy_every = max(1, a.steps - 1)
        a.search_proxies = proxies(a.steps, a.proxy_every)
        b = current()
        say(f"budget over: the search trial runs {a.search_proxies} proxy eval")
    if b["total_s"] > TARGET_S and a.search and not keep_search:
        a.search = False
        b = current()
        say("budget over: the search stage is left out (--search to force it)")
    return b


def render(b: dict) -> list[str]:
    lines = [f"budget {name}: {v['tflop']:g} TFLOP -> {v['compute_s']:g} s at {b['mfu']:g} x {b['peak_tflops']:g} "
             f"TFLOP/s + {v['startup_s']:g} s start-up (assumed) = {v['budget_s']:g} s"
             for name, v in b["stages"].items()]
    verdict = "fits" if b["total_s"] <= b["target_s"] else "over"
    lines.append(f"budget total: {b['total_s']:g} s of {b['target_s']:g} s ({verdict})")
    return lines
