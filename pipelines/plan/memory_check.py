"""From configs to a memory plan: what `t2vu plan` prints and what train/tune/run check first.

`PlanRequest` says what is planned (method config, optional pipeline config, mode, world
size, device, GPU memory); `plan_inputs` turns it into the numbers `pipelines.plan.memory_plan`
needs (architecture from the model directory or `model.architecture`, per-GPU rows, ZeRO
stage, eval geometry); the start-of-run check: `pipelines.plan.preflight`. The fix a refusal names
(the settings that shrink the dominant term, what they cost): `pipelines.plan.fixes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.plan.memory_plan import (
    GIB, USABLE_FRACTION, EvalShape, MemoryPlan, PlanInputs, TrajectoryShape, plan_memory,
)
from unlearn.config import ConfigError, EraserTrainingConfig, apply_overrides, read_yaml, validate

EXIT_WONT_FIT = 3  # distinct from config errors (2)
MODES = ("train", "distributed", "tune")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
METHOD_SECTIONS = ("model", "eraser", "concept", "loss", "train")


@dataclass(frozen=True)
class PlanRequest:
    method: EraserTrainingConfig
    pipeline: object | None = None  # pipelines.config.pipeline.PipelineConfig when the YAML has pipeline sections
    config_dir: Path | None = None
    mode: str = "train"  # train (one process) | distributed (Ray Train + DeepSpeed) | tune (trials evaluate on rank 0)
    world_size: int = 1
    device: str = "cuda"  # cuda | cpu: what the plan is for
    capacity_bytes: int | None = None


def load_plan_config(path: str | Path, overrides: list[str] | None = None):
    """(EraserTrainingConfig, PipelineConfig | None) of any config train/tune/run accept."""
    data = apply_overrides(read_yaml(path), overrides)
    if set(data) - set(METHOD_SECTIONS):
        from pipelines.config.pipeline import PipelineConfig

        pipeline = validate(PipelineConfig, data, str(path))
        return pipeline.method(), pipeline
    return validate(EraserTrainingConfig, data, str(path)), None


def make_request(method: EraserTrainingConfig, pipeline=None, *, config_dir=None, mode: str | None = None,
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
    from pipelines.config.distributed import GROUPS, per_worker_batch
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
    sp = sequence_parallel(req)  # a group of sp ranks shares one batch share (unlearn.sequence_parallel)
    if sp > 1 and (w % sp or arch.heads % sp):
        raise ConfigError(f"distributed.sequence_parallel={sp} must divide the world size ({w}) and the model's "
                          f"{arch.heads} attention heads")
    unit = "distributed.num_workers" if sp == 1 else GROUPS
    b = per_worker_batch(m.train.batch_size, w // sp, "train.batch_size", unit=unit)
    p = per_worker_batch(m.train.preserve_batch_size, w // sp, "train.preserve_batch_size", allow_zero=True, unit=unit)
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
        bank_latents=bank_latents(m),
        device=req.device, capacity_bytes=req.capacity_bytes, family=arch.family, ffn_dim=arch.ffn_dim,
        eraser_site=getattr(spec_class(m.model.family), "eraser_site", "attn1"), expand_timesteps=arch.expand_timesteps,
        experts=arch.experts, eraser_sites=n_sites, extra_rows=1 if arch.experts > 1 else 0,
        adv_steps=m.loss.adv_steps, anchor_preserve=m.loss.w_anchor_preserve > 0,
        fp32_ops=autocast_fp32_ops(req.device) if m.train.autocast == "bf16" else frozenset(),
        autocast=m.train.autocast == "bf16",
        shard_backbone=req.mode != "train" and req.pipeline is not None
        and bool(getattr(req.pipeline.distributed, "shard_backbone", False)), sequence_parallel=sp,
    )
    proxy, final = eval_shapes(req, arch, wbytes, abytes)
    inputs = replace(inputs, proxy_eval=proxy, final_eval=final)
    return inputs, arch


def bank_latents(m) -> int:
    """x_t latents the `bank:` rounds hold after the last round (unlearn.adversarial_bank.attack_round): each
    attacked restart keeps 4 x trajectory_steps concept states (+ its own base trajectory with bank_xt both), each
    kept adversarial-preservation row its anchor's trajectory; 0 without a bank."""
    from unlearn.bank_config import banked

    if not banked(m):
        return 0
    b, t = m.bank, m.bank.trajectory_steps
    attacked = b.rounds * b.pairs * b.restarts * (4 * t + (t if b.bank_xt == "both" else 0))
    return attacked + (b.rounds * b.pairs * t if b.preserve_steps else 0)  # preservation: at most one row a pair


def sequence_parallel(req: PlanRequest) -> int:
    """The request's `distributed.sequence_parallel` (1 for a single process)."""
    if req.mode == "train" or req.pipeline is None:
        return 1
    return int(getattr(req.pipeline.distributed, "sequence_parallel", 1))


def autocast_fp32_ops(device: str) -> frozenset:
    """The ops bf16 autocast runs in fp32 on `device`, from the installed torch's autocast kernels (imports torch)."""
    from unlearn.models.autocast_rules import fp32_ops

    return fp32_ops(device)


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


def trajectory_shape(m: EraserTrainingConfig, req: PlanRequest) -> TrajectoryShape | None:
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
    groups = req.world_size // sequence_parallel(req)  # a sequence-parallel group samples one share
    share = lambda n: max(1, math.ceil(n / groups)) if n else 0  # noqa: E731
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
        from eval.methods import METHODS

        final = shape(ecfg, DTYPE_BYTES[ecfg.model.dtype], DTYPE_BYTES[ecfg.model.dtype], True)
        # the eval actors' largest pipeline: a baseline that runs the text encoder itself (SAFREE, eval.methods) holds T5
        # beside transformer + VAE (the search's other evals read the filled text cache)
        final = replace(final, text_encoder=any(METHODS[b.name].needs_text_encoder for b in obj.baselines))
    return proxy, final


def plan_request(req: PlanRequest) -> tuple[MemoryPlan, object]:
    inputs, arch = plan_inputs(req)
    plan = plan_memory(inputs)
    plan.context.update({"mode": req.mode, "world_size": req.world_size, "device": req.device,
                         "architecture": arch.source, "zero_stage": inputs.zero_stage})
    return plan, arch


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
