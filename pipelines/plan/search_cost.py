"""What a search costs before it runs: GPU-hours and wall time of `t2vu tune`, from FLOP counts.

`search_cost(req, arch, mfu=, peak_tflops=)` -> a dict of numbers (no torch; the FLOPs are
`pipelines.plan.flops`). Time = FLOPs / (utilisation x the GPU's bf16 dense peak), one assumption
for every part (the default 0.4 of an H100's 989 TFLOP/s; `t2vu plan --mfu --gpu-tflops`), applied
to every FLOP executed, gradient-checkpointing recompute included. The parts:
- training: per optimizer step and worker, forward 1 (no grad, R1 = B + B*K + P rows; the attention
  capture of the B concept rows at fp32 matmul speed, FP32_SLOWDOWN), forward 2 (R2 rows, erasers on),
  its recompute under checkpointing, the frozen backward and the erasers' own work; the trajectory pool's
  sampling once per trial (xt_source trajectory); GPU time = wall x workers.
- proxy evals: run only where a scheduler reads them (`SearchConfig.proxy_every`: ASHA), on rank 0 while
  the other workers wait, so GPU time = wall x workers; their base videos once per search (cached).
- final evals: each trial's rows on one eval actor per freed GPU (wall = GPU time / workers).
- baselines: the training-free methods, each one final eval (same rows, no eraser).
- base videos: the final eval's base model videos, generated once per search (`runtime.base_cache_dir`).
- text cache: every eval prompt encoded once, before the trials (eval.text_cache; counted at the GPU rate, an
  upper bound: the search driver encodes them wherever it runs).
A video = sampler steps x (2 rows with CFG) transformer forwards + a VAE decode (estimate), + the prompts' text
encoding only for methods that run the text encoder themselves (a SAFREE baseline: eval.methods
`needs_text_encoder`): every other eval, negprompt's included, generates from the cached embeddings and loads no
text encoder. `pipeline_loads`: what the evals read from storage (transformer + VAE, + T5 where a method needs it),
once per pooled actor per search where the search's eval pool fits beside its trials (pipelines.search.eval_pool;
then the baselines without T5 run on the pool's actors too; on the modelled cluster, conc x workers GPUs, it does
not fit: every final eval loads its own), next to the reads before the text cache and the pool (`gb_read_before`).
Not modelled: the loads' time, checkpoint writes, NudeNet scoring (CPU), Ray start-up, ASHA's early stops (every
trial is counted to its last step: an upper bound for ASHA); wall time assumes `max_concurrent_trials` trials in waves.
"""

from __future__ import annotations

import math

from pipelines.plan import flops as F
from unlearn.config import ConfigError

DEFAULT_MFU = 0.4
DEFAULT_PEAK_TFLOPS = 989.0  # H100 SXM bf16 dense (tensor cores, no sparsity)
FP32_SLOWDOWN = 989.0 / 67.0  # the capture's fp32 matmuls (TF32 off, torch's default) run on H100's 67 TFLOP/s FP32
PARTS = ("training", "proxy_evals", "final_evals", "baselines", "base_videos", "text_cache")


def video_flops(arch, params_text_encoder: int, gen, text: bool = True) -> dict[str, float]:
    """One eval video's FLOPs: {"transformer", "text", "vae"} for generation settings `gen`; `text`: the prompts are
    encoded for this video (False: from the text-embedding cache, eval.text_cache)."""
    nv, _ = arch.token_counts(gen.num_frames, gen.height, gen.width)
    cfg_rows = 2 if gen.guidance_scale > 1 else 1  # CFG batches the unconditional row with the prompt's
    return {"transformer": gen.num_inference_steps * F.forward_flops(arch, nv, cfg_rows),
            "text": F.text_encoder_flops(params_text_encoder, arch.text_len, cfg_rows) if text else 0.0,
            "vae": F.vae_decode_flops(arch, gen.num_frames, gen.height, gen.width)}


def pipeline_loads(cfg, arch, runtime, *, dtype: str, trials: int, proxies: int, baselines: list[str],
                   gpus: int) -> dict:
    """What the search's evals read from storage (GB, the model's dtype): now, and before the text cache and the
    eval pool (every eval pipeline with T5, loaded per eval; a proxy: T5 + VAE beside the training backbone)."""
    from eval.workers import TEXT_FREE_METHODS
    from pipelines.search.eval_pool import pool_off_reason

    p = arch.parameter_counts()
    size = 2 if dtype in ("bfloat16", "float16") else 4
    gb = {k: p[k] * size / 1e9 for k in p}
    pipe, t5, actors = gb["transformer"] + gb["vae"], gb["text_encoder"], runtime.num_actors
    pooled = pool_off_reason(cfg, runtime, {"GPU": float(gpus), "CPU": math.inf}) is None
    finals = (1 if pooled else trials) * actors * pipe
    # a baseline without T5 has the final evals' pipeline: a pool's actors serve it with no load of its own
    base = sum(actors * (pipe + t5) if b not in TEXT_FREE_METHODS else 0.0 if pooled else actors * pipe
               for b in baselines)
    now = finals + base + trials * proxies * gb["vae"]
    before = (trials + len(baselines)) * actors * (pipe + t5) + trials * proxies * (gb["vae"] + t5)
    return {"pooled": pooled, "gb_read": round(now, 1), "gb_read_before": round(before, 1),
            "gb_per_pipeline": round(pipe, 2), "gb_text_encoder": round(t5, 2)}


def step_flops(req, arch) -> dict[str, float]:
    """One worker's optimizer step (its share of the global batch), by part."""
    from pipelines.config.distributed import per_worker_batch

    m, w = req.method, req.world_size
    b = per_worker_batch(m.train.batch_size, w, "train.batch_size")
    p = per_worker_batch(m.train.preserve_batch_size, w, "train.preserve_batch_size", allow_zero=True)
    refs = len(m.concept.anchors) if m.concept.reference == "anchors" else 1
    nv, _ = arch.token_counts(m.model.num_frames, m.model.height, m.model.width)
    r1 = b * (1 + refs) + p
    extra = b * (int(m.loss.adv_steps > 0) + int(m.loss.w_anchor_preserve > 0))
    r2 = b + p + extra
    sites = len(set(m.eraser.blocks)) if m.eraser.blocks is not None else arch.layers
    captured = 0 if m.loss.w_localize == 0 else len(set(m.loss.mask_layers or range(arch.layers)))
    er_row = F.eraser_flops(arch.hidden, m.eraser.rank, sites, nv)
    fwd2 = F.forward_flops(arch, nv, r2) + r2 * er_row
    out = {
        "forward_1": F.forward_flops(arch, nv, r1),
        "capture": F.capture_flops(arch, nv, b, captured) * FP32_SLOWDOWN,
        "forward_2": fwd2,
        "recompute": fwd2 if m.train.gradient_checkpointing else 0.0,
        "backward": F.frozen_backward_flops(arch, nv, r2) + r2 * 2 * er_row,  # + the erasers' input and weight grads
    }
    if m.loss.adv_steps:  # inner attack passes on the concept rows: forward + backward each
        out["adversarial"] = m.loss.adv_steps * b * (F.forward_flops(arch, nv, 1) + F.frozen_backward_flops(arch, nv, 1))
    return out


def _rows(ecfg, limit: int | None, toy) -> int | None:
    """Videos one eval makes: `limit` rows of each prompt set (prompts, and preserve when it has one); without
    a limit, the sets' sizes (toy prompts: n per set; a CSV: its rows); None when they cannot be known."""
    if toy is not None:
        return sum(min(limit or toy.n, toy.n) for _ in [*toy.sets, *toy.preserve_sets])
    sets = 1 + int(bool(ecfg.preserve.path))
    if limit is not None:
        return sets * int(limit)
    try:
        from unlearn.data import read_prompt_csv

        return sum(len(read_prompt_csv(ecfg.resolve_path(sec.path), [sec.prompt_column]))
                   for sec in (ecfg.prompts, ecfg.preserve) if sec.path)
    except Exception:  # noqa: BLE001 - a placeholder path: the cost says it cannot count, the plan goes on
        return None


def search_cost(req, arch, *, mfu: float = DEFAULT_MFU, peak_tflops: float = DEFAULT_PEAK_TFLOPS,
                proxy_every: int | None | bool = True, gpus: int | None = None) -> dict:
    """The search's modelled cost (GPU-hours and wall hours per part). `proxy_every=True`: as the search
    schedules proxies (`SearchConfig.proxy_every`); an int or None models another choice (e.g. the
    configured `proxy.every` as if a scheduler read it). `gpus`: the cluster's GPUs (default: what the concurrent
    trials use; more leave room for the search's eval pool, `pipeline_loads`); `gpu_hours_held` = gpus x wall, what
    a cluster reserved for the search holds, busy or idle."""
    from pipelines.search.objective import PROXY_EVAL_OVERRIDES, resolve_eval_config

    if not 0 < mfu <= 1:
        raise ConfigError(f"--mfu {mfu}: must be in (0, 1], e.g. --mfu 0.4")
    if not peak_tflops > 0:
        raise ConfigError(f"--gpu-tflops {peak_tflops}: must be > 0, e.g. --gpu-tflops 989 (H100 bf16 dense)")
    cfg = req.pipeline
    s, m = cfg.search, req.method
    if not cfg.distributed.use_gpu:
        return {"gpu_hours": None, "not_modelled": "distributed.use_gpu is false: a CPU search"}
    rate = mfu * peak_tflops * 1e12  # FLOP/s per GPU
    workers = req.world_size
    params_te = arch.parameter_counts()["text_encoder"]

    step = step_flops(req, arch)
    train_wall = m.train.steps * sum(step.values()) / rate
    traj = 0.0
    if m.train.xt_source == "trajectory":
        from pipelines.plan.memory_check import trajectory_shape

        tr = trajectory_shape(m, req)
        nv, _ = arch.token_counts(m.model.num_frames, m.model.height, m.model.width)
        traj = tr.prompts * tr.steps * F.forward_flops(arch, nv, 2 * tr.pool_size) / rate
    train_wall += traj

    ecfg = resolve_eval_config(cfg, req.config_dir)
    toy = s.objective.toy_prompts
    final_rows = _rows(ecfg, s.objective.limit, toy)
    if final_rows is None:
        return {"gpu_hours": None, "not_modelled": "the eval's prompt files cannot be read to count their rows: set "
                                                   "search.objective.limit: N (rows per prompt set)"}
    final_video = sum(video_flops(arch, params_te, ecfg.generation, text=False).values()) / rate
    every = s.proxy_every() if proxy_every is True else proxy_every
    proxies = len([k for k in range(every, m.train.steps, every)]) if every else 0  # none on the last step
    proxy_video = proxy_rows = 0
    if proxies:
        pcfg = ecfg.with_overrides({**PROXY_EVAL_OVERRIDES, **s.objective.proxy.overrides}, "search.objective.proxy.overrides")
        proxy_rows = _rows(pcfg, s.objective.proxy.limit, toy)
        proxy_video = sum(video_flops(arch, params_te, pcfg.generation, text=False).values()) / rate

    n, conc = s.num_samples, s.max_concurrent_trials
    actors = workers  # final evals and baselines: one eval actor per GPU the trial's workers freed
    from eval.workers import TEXT_FREE_METHODS

    methods = [b.name for b in s.objective.baselines]
    # a method that runs T5 itself (SAFREE) encodes the prompt, the negative prompt and, for its token selection, the
    # prompt once per token with that token masked (eval.safree): at most text_len more rows, counted in full (a bound)
    text_video = F.text_encoder_flops(params_te, arch.text_len, 2 + arch.text_len) / rate
    baseline_videos = sum(final_video + (text_video if b not in TEXT_FREE_METHODS else 0.0) for b in methods)
    fill_s = F.text_encoder_flops(params_te, arch.text_len, final_rows + 1) / rate  # + the negative prompt
    per_trial_wall = {"training": train_wall, "proxy_evals": proxies * proxy_rows * proxy_video,
                      "final_evals": math.ceil(final_rows / actors) * final_video}
    gpu_s = {
        "training": n * train_wall * workers,
        "proxy_evals": n * per_trial_wall["proxy_evals"] * workers,  # rank 0 evaluates, every rank waits
        "final_evals": n * final_rows * final_video,
        "baselines": final_rows * baseline_videos,
        # once per search: the final eval's base videos, and the proxies' (their own sampler settings)
        "base_videos": final_rows * final_video + (proxy_rows * proxy_video if proxies else 0.0) * workers,
        "text_cache": fill_s,
    }
    waves = math.ceil(n / conc)
    wall_s = {
        "training": waves * per_trial_wall["training"], "proxy_evals": waves * per_trial_wall["proxy_evals"],
        "final_evals": waves * per_trial_wall["final_evals"],
        "baselines": math.ceil(final_rows / actors) * baseline_videos,
        "base_videos": math.ceil(final_rows / actors) * final_video + (proxy_rows * proxy_video if proxies else 0.0),
        "text_cache": fill_s,
    }
    final_runtime = ecfg.with_overrides({"runtime.num_actors": workers, "runtime.use_gpu": True}).runtime
    gpus = conc * workers if gpus is None else gpus
    loads = pipeline_loads(cfg, arch, final_runtime, dtype=ecfg.model.dtype, trials=n, proxies=proxies, baselines=methods, gpus=gpus)
    total_gpu_h = sum(gpu_s.values()) / 3600
    return {
        "gpu_hours": round(total_gpu_h, 2),
        "wall_hours": round(sum(wall_s.values()) / 3600, 2),
        "gpu_hours_held": round(gpus * sum(wall_s.values()) / 3600, 2),
        "parts_gpu_hours": {k: round(gpu_s[k] / 3600, 2) for k in PARTS},
        "parts_share": {k: round(gpu_s[k] / 3600 / total_gpu_h, 3) for k in PARTS},
        "parts_wall_hours": {k: round(wall_s[k] / 3600, 2) for k in PARTS},
        "assumptions": {"mfu": mfu, "gpu_peak_tflops": peak_tflops, "capture_fp32_slowdown": round(FP32_SLOWDOWN, 2)},
        "cluster": {"trials": n, "concurrent_trials": conc, "workers_per_trial": workers, "gpus": gpus},
        "per_trial": {"steps": m.train.steps, "step_tflop_per_worker": round(sum(step.values()) / 1e12, 1),
                      "step_tflop_parts": {k: round(v / 1e12, 2) for k, v in step.items()},
                      "training_hours": round(train_wall / 3600, 3), "proxy_evals": proxies,
                      "proxy_videos_each": proxy_rows, "final_videos": final_rows},
        "video_seconds": {"final": round(final_video, 1), "proxy": round(proxy_video, 1) if proxies else None},
        "proxy_note": s.proxy_skip_note(),
        "pipeline_loads": loads,
        "left_out": left_out(cfg),
    }


def left_out(cfg) -> list[str]:
    """The work a trial does that the hours above do not count (each one line): flagged, never silently omitted,
    so a robust search is not planned at its clean search's price."""
    from unlearn.bank_config import banked
    from unlearn.gate_config import gated

    s, out = cfg.search, []
    if s.objective.attack is not None:
        a = s.objective.attack
        what = f"attacks {a.attacks}" if a.attacks else "the attack config's attacks"
        out.append(f"search.objective.attack: {what} on every trial's eraser (and each baseline) after its final eval")
    if banked(cfg):
        b = cfg.bank
        out.append(f"bank: {b.rounds} rounds x ({b.pairs} pairs x {b.restarts} restarts x {b.attack_steps} attack steps "
                   f"+ {b.steps_per_round} training steps) per trial, on one GPU after its training")
    if gated(cfg):
        out.append("gate: the probe's base-model trajectories and training per trial, on one GPU after its training")
    return out


def render_cost(c: dict) -> str:
    if c.get("gpu_hours") is None:
        return f"Search cost: not modelled ({c['not_modelled']})"
    a, cl, t = c["assumptions"], c["cluster"], c["per_trial"]
    lines = [f"Search cost (modelled): {c['gpu_hours']:.1f} GPU-hours, {c['wall_hours']:.1f} h wall on {cl['gpus']} GPUs "
             f"({cl['trials']} trials, {cl['concurrent_trials']} at a time x {cl['workers_per_trial']} workers); "
             f"{a['mfu']:.0%} utilisation of {a['gpu_peak_tflops']:g} TFLOP/s bf16 per GPU (--mfu, --gpu-tflops)",
             f"{'part':<14} {'GPU-h':>8} {'share':>6} {'wall h':>7}"]
    for k in PARTS:
        lines.append(f"{k:<14} {c['parts_gpu_hours'][k]:>8.2f} {c['parts_share'][k]:>6.0%} {c['parts_wall_hours'][k]:>7.2f}")
    lines.append(f"per trial: {t['steps']} steps x {t['step_tflop_per_worker']:g} TFLOP per worker, {t['proxy_evals']} proxy "
                 f"evals, {t['final_videos']} final-eval videos ({c['video_seconds']['final']:g} s each)")
    if c.get("proxy_note"):
        lines.append(c["proxy_note"])
    for item in c.get("left_out", []):
        lines.append(f"NOT in these hours: {item}")
    ld = c["pipeline_loads"]
    lines.append(f"eval model reads: {ld['gb_read']:,.0f} GB ({ld['gb_read_before']:,.0f} GB before the text-embedding "
                 f"cache and the eval pool); eval pool {'on: one load per actor' if ld['pooled'] else 'off (its actors would not fit beside the trials): one load per eval'}; T5 loads only for a SAFREE baseline (it encodes token-edited prompts), every other eval reads the filled text cache")
    return "\n".join(lines)
