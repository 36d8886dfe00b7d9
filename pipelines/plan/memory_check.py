"""From configs to a memory plan: what `t2vu plan` prints and what train/tune/run check first.

`PlanRequest` says what is planned (method config, optional pipeline config, mode, world
size, device, GPU memory); `plan_inputs` turns it into the numbers `pipelines.plan.memory_plan`
needs (architecture from the model directory or `model.architecture`, per-GPU rows, ZeRO
stage, eval geometry); `find_fix` re-plans with the settings that shrink the dominant term
and names the first that fits; `preflight` is the start-of-run check (CUDA only).
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.plan.memory_plan import (
    GIB, USABLE_FRACTION, EvalShape, MemoryPlan, PlanInputs, TrajectoryShape, plan_memory,
)
from unlearn.config import ConfigError, MethodConfig, apply_overrides, read_yaml, validate

EXIT_WONT_FIT = 3  # distinct from config errors (2)
MODES = ("train", "distributed", "tune")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
METHOD_SECTIONS = ("model", "eraser", "concept", "loss", "train")


@dataclass(frozen=True)
class PlanRequest:
    method: MethodConfig
    pipeline: object | None = None  # pipelines.config.pipeline.PipelineConfig when the YAML has pipeline sections
    config_dir: Path | None = None
    mode: str = "train"  # train (one process) | distributed (Ray Train + DeepSpeed) | tune (trials evaluate on rank 0)
    world_size: int = 1
    device: str = "cuda"  # cuda | cpu: what the plan is for
    capacity_bytes: int | None = None


def load_plan_config(path: str | Path, overrides: list[str] | None = None):
    """(MethodConfig, PipelineConfig | None) of any config train/tune/run accept."""
    data = apply_overrides(read_yaml(path), overrides)
    if set(data) - set(METHOD_SECTIONS):
        from pipelines.config.pipeline import PipelineConfig

        pipeline = validate(PipelineConfig, data, str(path))
        return pipeline.method(), pipeline
    return validate(MethodConfig, data, str(path)), None


def make_request(method: MethodConfig, pipeline=None, *, config_dir=None, mode: str | None = None,
                 world_size: int | None = None, gpu_memory_gb: float | None = None) -> PlanRequest:
    """Mode, world size and device as the run would have them (explicit arguments win)."""
    declared = pipeline is not None and "distributed" in pipeline.model_fields_set
    if mode is None:
        if pipeline is not None and pipeline.search is not None:
            mode = "tune"
        elif (world_size or 1) > 1 or (world_size is None and declared):
            mode = "distributed"
        else:
            mode = "train"
    if mode not in MODES:
        raise ConfigError(f"plan mode {mode!r}: use one of {', '.join(MODES)}")
    if world_size is None:
        world_size = 1 if mode == "train" else (pipeline.distributed.num_workers if pipeline is not None else 2)
    if mode == "train" and world_size > 1:
        mode = "distributed"
    if mode == "train":
        device = "cpu" if method.train.device == "cpu" else "cuda"
    else:
        device = "cuda" if pipeline is None or pipeline.distributed.use_gpu else "cpu"
    capacity = int(gpu_memory_gb * GIB) if gpu_memory_gb else (detect_gpu_memory(method.train.device) if device == "cuda" else None)
    return PlanRequest(method, pipeline, Path(config_dir) if config_dir else None, mode, int(world_size), device, capacity)


def detect_gpu_memory(setting: str = "auto") -> int | None:
    """Total memory of the GPU this process would train on, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = int(setting[5:]) if setting.startswith("cuda:") else torch.cuda.current_device()
    return int(torch.cuda.get_device_properties(index).total_memory)


def plan_inputs(req: PlanRequest):
    """(PlanInputs, Architecture) for a request; ConfigError names the field when the config cannot run."""
    from pipelines.config.distributed import per_worker_batch
    from unlearn.models.architectures import resolve_architecture
    from unlearn.models.families import spec_class

    m = req.method
    try:
        arch = resolve_architecture(m.model.path, m.model.architecture)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if m.model.family.split("-")[0] != arch.family:
        raise ConfigError(f"model.family {m.model.family!r} but the architecture ({arch.source}) is a {arch.family} "
                          f"model: set model.family to {arch.family!r} or model.architecture to a {m.model.family} preset")
    geometry_check(arch, m.model.num_frames, m.model.height, m.model.width, "model")
    nv, latent = arch.token_counts(m.model.num_frames, m.model.height, m.model.width)
    counts = arch.parameter_counts()
    w = req.world_size
    b = per_worker_batch(m.train.batch_size, w, "train.batch_size")
    p = per_worker_batch(m.train.preserve_batch_size, w, "train.preserve_batch_size", allow_zero=True)
    sites = arch.layers * arch.experts  # Wan 2.2 A14B: the high expert's blocks, then the low expert's
    blocks = tuple(range(sites)) if m.eraser.blocks is None else tuple(sorted(set(m.eraser.blocks)))
    bad = [i for i in blocks if not 0 <= i < sites]
    if bad:
        raise ConfigError(f"eraser.blocks {bad} out of range: the model has {sites} blocks (0..{sites - 1})")
    capture = 0 if m.loss.w_localize == 0 else len(set(m.loss.mask_layers or range(sites)))
    # a row runs through one expert: its erasers and captured layers are one expert's share
    n_sites, blocks = len(blocks), tuple(sorted({i % arch.layers for i in blocks}))
    capture = -(-capture // arch.experts)
    wbytes = DTYPE_BYTES[m.model.dtype]
    abytes = 2 if wbytes == 2 or m.train.autocast == "bf16" else 4
    stage, bucket = (None, 50_000_000) if req.mode == "train" else zero_settings(req)
    inputs = PlanInputs(
        hidden=arch.hidden, heads=arch.heads, head_dim=arch.head_dim, layers=arch.layers, text_len=arch.text_len,
        params_transformer=counts["transformer"], params_text_encoder=counts["text_encoder"], params_vae=counts["vae"],
        vae_channels=arch.vae_channels, pos_embed_elems=arch.positional_buffer_elems(),
        video_tokens=nv, latent_elems=latent,
        concept_rows=b, references=len(m.concept.anchors) if m.concept.reference == "anchors" else 1, preserve_rows=p,
        eraser_rank=m.eraser.rank, eraser_blocks=blocks, capture_layers=capture, attn_chunk=m.loss.attn_chunk,
        weight_bytes=wbytes, act_bytes=abytes, checkpointing=m.train.gradient_checkpointing,
        world_size=w, zero_stage=stage, reduce_bucket=bucket, trajectory=trajectory_shape(m, req),
        device=req.device, capacity_bytes=req.capacity_bytes, family=arch.family, ffn_dim=arch.ffn_dim,
        eraser_site=getattr(spec_class(m.model.family), "eraser_site", "attn1"), expand_timesteps=arch.expand_timesteps,
        experts=arch.experts, eraser_sites=n_sites, extra_rows=1 if arch.experts > 1 else 0,
        adv_steps=m.loss.adv_steps, anchor_preserve=m.loss.w_anchor_preserve > 0,
    )
    proxy, final = eval_shapes(req, arch, wbytes, abytes)
    inputs = replace(inputs, proxy_eval=proxy, final_eval=final)
    return inputs, arch


def geometry_check(arch, frames: int, height: int, width: int, section: str) -> None:
    if (frames - 1) % arch.vae_temporal:
        raise ConfigError(f"{section}.num_frames={frames} must be 1 + a multiple of {arch.vae_temporal} (e.g. 9, 49)")
    step = arch.vae_spatial * arch.patch
    if height % step or width % step:
        raise ConfigError(f"{section}.height/width {height}x{width} must be multiples of {step} (VAE factor x patch)")


def _pipeline(req: PlanRequest, overrides: dict):
    """The request's pipeline config (or one around its method config) with `overrides` set."""
    from pipelines.config.pipeline import PipelineConfig

    base = req.pipeline if req.pipeline is not None else PipelineConfig.model_validate(req.method.model_dump(mode="json"))
    return base.with_overrides({**req.method.model_dump(mode="json"), **overrides})


def zero_settings(req: PlanRequest) -> tuple[int, int]:
    from pipelines.config.distributed import deepspeed_config

    cfg = _pipeline(req, {"distributed.num_workers": req.world_size})
    zo = deepspeed_config(cfg, req.config_dir).get("zero_optimization", {})
    return int(zo.get("stage", cfg.distributed.zero_stage)), int(zo.get("reduce_bucket_size", 50_000_000))


def trajectory_shape(m: MethodConfig, req: PlanRequest) -> TrajectoryShape | None:
    """This rank's share of the pool: concept and preserve prompts are sharded round-robin over ranks."""
    if m.train.xt_source != "trajectory":
        return None
    c = m.concept
    if c.prompts_file:
        from unlearn.data import read_prompt_csv

        path = Path(c.prompts_file)
        if not path.is_absolute() and req.config_dir is not None and not path.exists():
            path = req.config_dir / path
        try:
            n_concept = len({r[c.prompts_column].strip() for r in read_prompt_csv(path, [c.prompts_column])})
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
    else:
        n_concept = len(set(c.prompts))
    n_pres = len(set(c.preserve) | ({""} if c.preserve_empty else set()))
    share = lambda n: max(1, math.ceil(n / req.world_size)) if n else 0  # noqa: E731
    tr = m.train.trajectory
    return TrajectoryShape(share(n_concept) + share(n_pres), tr.pool_size, tr.num_inference_steps)


def eval_shapes(req: PlanRequest, arch, train_bytes: int, train_act: int) -> tuple[EvalShape | None, EvalShape | None]:
    """(proxy, final) trial evaluations of a search config (pipelines.search.objective decides where they run)."""
    if req.mode != "tune" or req.pipeline is None or req.pipeline.search is None:
        return None, None
    from pipelines.search.objective import PROXY_EVAL_OVERRIDES, resolve_eval_config

    cfg = req.pipeline
    ecfg = resolve_eval_config(cfg, req.config_dir)
    obj = cfg.search.objective

    def shape(e, wbytes: int, abytes: int, whole: bool) -> EvalShape:
        g = e.generation
        tiling = g.vae_tiling if isinstance(g.vae_tiling, bool) else (req.device == "cuda" and g.height * g.width >= 256 * 256)
        return EvalShape(wbytes, abytes, arch.token_counts(g.num_frames, g.height, g.width)[0], g.num_frames, g.height,
                         g.width, bool(tiling), whole)

    proxy = None
    if cfg.search.proxy_every():  # only where a scheduler reads them (ASHA rungs)
        pcfg = ecfg.with_overrides({**PROXY_EVAL_OVERRIDES, **obj.proxy.overrides}, "search.objective.proxy.overrides")
        proxy = shape(pcfg, train_bytes, train_act, False)  # loaded in the training transformer's dtype
    final = None
    if cfg.distributed.use_gpu:
        final = shape(ecfg, DTYPE_BYTES[ecfg.model.dtype], DTYPE_BYTES[ecfg.model.dtype], True)
    return proxy, final


def plan_request(req: PlanRequest) -> tuple[MemoryPlan, object]:
    inputs, arch = plan_inputs(req)
    plan = plan_memory(inputs)
    plan.context.update({"mode": req.mode, "world_size": req.world_size, "device": req.device,
                         "architecture": arch.source, "zero_stage": inputs.zero_stage})
    return plan, arch


# --- fixes -------------------------------------------------------------------------------------

ACTIVATION_TERMS = {"forward 2 saved activations", "eraser saved activations", "backward grads in flight",
                    "backward recompute + grads", "eraser energy records"}
FORWARD1_TERMS = {"forward 1 activations", "attention-capture scratch", "attention-capture results"}
ERASER_TERMS = {"eraser parameters", "eraser gradients", "optimizer state"}


def _with(req: PlanRequest, overrides: dict) -> PlanRequest:
    method = validate(MethodConfig, apply_overrides(req.method.model_dump(mode="json"), overrides), "--set")
    return replace(req, method=method)


def _set(overrides: dict):
    return lambda base: _with(base, overrides)


def stages(req: PlanRequest, dominant: str) -> list[list[tuple[str, object]]]:
    """Groups of (setting, base -> request) that shrink term `dominant`, cheapest group first; within
    a group, mildest first. `find_fix` carries a group's strongest setting into the next group."""
    m, w = req.method, req.world_size
    out: list[list[tuple[str, object]]] = []
    if dominant in ("eraser energy records", "eraser saved activations"):
        dominant = "forward 2 saved activations"  # one set of settings shrinks them all
    if dominant in ACTIVATION_TERMS and not m.train.gradient_checkpointing:
        out.append([("--set train.gradient_checkpointing=true", _set({"train.gradient_checkpointing": True}))])
    if dominant == "attention-capture scratch" and m.loss.attn_chunk > 256:
        out.append([(f"--set loss.attn_chunk={c}", _set({"loss.attn_chunk": c}))
                    for c in sorted({m.loss.attn_chunk // 2, m.loss.attn_chunk // 4, 256}, reverse=True)])
    if dominant in ACTIVATION_TERMS | FORWARD1_TERMS:
        rows, b, p = [], m.train.batch_size, m.train.preserve_batch_size
        while p > w or b > w:
            p, b = (max(w, p // 2 // w * w), b) if p > w else (p, max(w, b // 2 // w * w))
            rows.append((f"--set train.batch_size={b} --set train.preserve_batch_size={p}",
                         _set({"train.batch_size": b, "train.preserve_batch_size": p})))
        out.append(rows)
        if req.mode != "train":
            out.append([(f"--set distributed.num_workers={n}", lambda base, n=n: replace(base, world_size=n))
                        for n in (2 * w, 4 * w)])
        f = m.model.num_frames
        out.append([(f"--set model.num_frames={x}", _set({"model.num_frames": x})) for x in range(f - 4, 0, -4)])
        out.append([(f"--set model.height={int(m.model.height * k) // 16 * 16} --set model.width={int(m.model.width * k) // 16 * 16}",
                     _set({"model.height": int(m.model.height * k) // 16 * 16, "model.width": int(m.model.width * k) // 16 * 16}))
                    for k in (0.75, 0.5)])
    if dominant == "backbone weights" and m.model.dtype == "float32":
        out.append([("--set model.dtype=bfloat16", _set({"model.dtype": "bfloat16"}))])
    if dominant in ERASER_TERMS:
        if req.mode != "train" and (req.pipeline is None or req.pipeline.distributed.zero_stage == 2):
            out.append([("--set distributed.zero_stage=3",
                         lambda base: replace(base, pipeline=_pipeline(base, {"distributed.zero_stage": 3})))])
        out.append([(f"--set eraser.rank={r}", _set({"eraser.rank": r})) for r in (m.eraser.rank // 2, m.eraser.rank // 4) if r])
    if dominant == "trajectory sampling" and m.train.trajectory.pool_size > 1:
        out.append([(f"--set train.trajectory.pool_size={n}", _set({"train.trajectory.pool_size": n}))
                    for n in (m.train.trajectory.pool_size // 2, 1)])
    return [g for g in out if g]


def find_fix(req: PlanRequest, plan: MemoryPlan) -> dict:
    """The settings that make the plan fit, with the new peak, or why none do.

    Terms are tried largest first (a fixed-size dominant term such as the backbone leaves the next
    one to shrink); per term, `stages` groups are applied until one setting fits."""
    seen: set[str] = set()
    tried: list[dict] = []
    for term in plan.live_terms():
        groups = stages(req, term.name)
        key = repr([[label for label, _ in g] for g in groups])
        if not groups or key in seen:
            continue
        seen.add(key)
        fix = _fix_along(req, groups)
        if fix["fits"]:
            return {**fix, "shrinks": term.name}
        tried.append(fix)
    dominant = plan.dominant.name
    hint = {
        "backbone weights": "the frozen backbone is replicated on every GPU: use a GPU with more memory",
        "proxy eval weights": "the proxy eval loads T5 + VAE next to training on rank 0: set search.objective.proxy.every: "
                              "null (final evals only) or use a bigger GPU",
        "final eval weights": "the final eval loads a whole pipeline per GPU: use bigger GPUs for evaluation",
        "proxy eval activations": "lower generation.num_frames/height/width or set generation.vae_tiling: true "
                                  "in search.objective.proxy.overrides",
        "final eval activations": "lower generation.num_frames/height/width or set generation.vae_tiling: true "
                                  "in search.objective.eval_overrides",
    }.get(dominant, "no setting the plan knows makes it fit: use a GPU with more memory")
    best = min(tried, key=lambda f: f["tried_peak_gb"] or 1e18, default={})
    return {"setting": None, "fits": False, "tried": best.get("tried"), "tried_peak_gb": best.get("tried_peak_gb"),
            "hint": hint}


def _fix_along(req: PlanRequest, groups) -> dict:
    base, applied, last_peak = req, [], None
    for group in groups:
        strongest = None
        for label, make in group:
            try:
                cand = make(base)
                p, _ = plan_request(cand)
            except ConfigError:
                continue
            if p.fits:
                return {"setting": " ".join(applied + [label]), "peak_gb": round(p.peak_bytes / GIB, 2), "fits": True}
            strongest = (label, cand, p)
        if strongest is not None:
            applied.append(strongest[0])
            base, last_peak = strongest[1], round(strongest[2].peak_bytes / GIB, 2)
    return {"setting": None, "fits": False, "tried": " ".join(applied) or None, "tried_peak_gb": last_peak}


# --- output ------------------------------------------------------------------------------------

def render(plan: MemoryPlan, req: PlanRequest, arch, source: str) -> str:
    x_m = req.method.model
    s = plan.summary()
    lines = [
        f"Memory plan for {source}: {arch.source}, {x_m.num_frames}x{x_m.height}x{x_m.width}, {x_m.dtype} weights",
        f"mode {req.mode}, world size {req.world_size}, device {req.device}"
        + (f", DeepSpeed ZeRO-{s['zero_stage']}" if s.get("zero_stage") else ", plain AdamW")
        + f", gradient checkpointing {'on' if req.method.train.gradient_checkpointing else 'off'}",
        f"{'term':<30} {'phase':<24} {'GB':>8}  note",
    ]
    for t in plan.terms:
        where = t.phase if t.where == "gpu" else "host (not GPU)"
        lines.append(f"{t.name:<30} {where:<24} {t.gb:>8.2f}  {t.note}")
    resident = sum(t.bytes for t in plan.terms if t.phase == "all" and t.where == "gpu")
    lines.append(f"{'resident (all phases of training)':<55} {resident / GIB:>8.2f}")
    for ph, b in plan.phases.items():
        lines.append(f"{'= per GPU during ' + ph:<55} {b / GIB:>8.2f}" + ("  <- peak" if ph == plan.peak_phase else ""))
    cap = "none (no GPU visible; pass --gpu-memory GB)" if plan.capacity_bytes is None else f"{plan.capacity_bytes / GIB:.1f} GB"
    verdict = {None: "unknown", True: "fits", False: "does NOT fit"}[plan.fits]
    lines.append(f"peak per GPU {plan.peak_bytes / GIB:.2f} GB against GPU memory {cap} "
                 f"({USABLE_FRACTION:.0%} usable): {verdict}; dominant term: {plan.dominant.name} "
                 f"({plan.dominant.gb:.2f} GB); host: {plan.host_bytes() / GIB:.2f} GB  (GB = 2^30 bytes)")
    return "\n".join(lines)


def refusal(plan: MemoryPlan, fix: dict) -> str:
    head = (f"will not fit: peak {plan.peak_bytes / GIB:.1f} GB per GPU > {USABLE_FRACTION:.0%} of "
            f"{plan.capacity_bytes / GIB:.1f} GB; dominant term: {plan.dominant.name} ({plan.dominant.gb:.1f} GB)")
    if fix.get("setting"):
        also = "" if fix["shrinks"] == plan.dominant.name else f", shrinks {fix['shrinks']}"
        return f"{head}. Fix: {fix['setting']} (peak -> {fix['peak_gb']} GB{also})"
    tried = f" (tried {fix['tried']}: peak {fix['tried_peak_gb']} GB)" if fix.get("tried") else ""
    return f"{head}. {fix['hint']}{tried}"


def preflight(method: MethodConfig, pipeline=None, *, mode: str, config_dir=None, stream=None,
              gpu_memory_gb: float | None = None) -> int | None:
    """Start-of-run check on CUDA: None to go on, EXIT_WONT_FIT after printing why not.
    `gpu_memory_gb`: the card's memory (default: the visible GPU's).

    Silent when the run fits (logged at INFO: `t2vu -v`), and when the plan cannot be made (a config
    error the run itself reports in its own words next, or no GPU visible to compare against)."""
    stream = stream or sys.stderr
    if mode == "train" and method.train.device in ("cpu", "meta"):
        return None
    if mode != "train" and not (pipeline is not None and pipeline.distributed.use_gpu and method.train.device not in ("cpu", "meta")):
        return None
    world = None if mode == "train" else pipeline.distributed.num_workers
    try:
        req = make_request(method, pipeline, config_dir=config_dir, mode=mode, world_size=world,
                           gpu_memory_gb=gpu_memory_gb)
        if req.capacity_bytes is None:  # e.g. a Ray driver without a GPU: nothing to compare against
            return None
        plan, arch = plan_request(req)
    except ConfigError:
        return None
    if plan.fits:
        logging.getLogger(__name__).info("memory plan: peak %.1f GB per GPU of %.1f GB (dominant: %s); details: t2vu plan",
                                         plan.peak_bytes / GIB, req.capacity_bytes / GIB, plan.dominant.name)
        return None
    print(render(plan, req, arch, "this run"), file=stream)
    print(f"error: {refusal(plan, find_fix(req, plan))}", file=stream, flush=True)
    return EXIT_WONT_FIT
