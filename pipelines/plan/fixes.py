"""The fix a refusal names: which settings shrink the term that does not fit, the first that fits, and what it
costs.

`stages` lists, per memory term, the settings that shrink it (cheapest group first); `find_fix` re-plans with
them (`pipelines.plan.memory_check.plan_request`) until one fits and reports the term it shrinks (before ->
after) and what the run gives up for it (`costs`: shorter or smaller videos, fewer rows per step, more GPUs...),
read from the difference between the planned request and the fixed one; `refusal` is the one-line error.
"""

from __future__ import annotations

from dataclasses import replace

from pipelines.plan.memory_check import PlanRequest, _pipeline, plan_request
from pipelines.plan.memory_plan import GIB, USABLE_FRACTION, MemoryPlan
from unlearn.config import ConfigError, EraserTrainingConfig, apply_overrides, validate

ACTIVATION_TERMS = {"forward 2 saved activations", "eraser saved activations", "backward grads in flight",
                    "backward recompute + grads", "eraser energy records"}
FORWARD1_TERMS = {"forward 1 activations", "attention-capture scratch", "attention-capture results"}
ERASER_TERMS = {"eraser parameters", "eraser gradients", "optimizer state"}


def _with(req: PlanRequest, overrides: dict) -> PlanRequest:
    method = validate(EraserTrainingConfig, apply_overrides(req.method.model_dump(mode="json"), overrides), "--set")
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
        if req.mode != "train":  # the video stays whole: its tokens split over P workers, the rows per step / P
            out.append(_sequence_parallel(req))
            out.append([(f"--set distributed.num_workers={n}", lambda base, n=n: replace(base, world_size=n))
                        for n in (2 * w, 4 * w)])
        f = m.model.num_frames
        out.append([(f"--set model.num_frames={x}", _set({"model.num_frames": x})) for x in range(f - 4, 0, -4)])
        out.append([(f"--set model.height={int(m.model.height * k) // 16 * 16} --set model.width={int(m.model.width * k) // 16 * 16}",
                     _set({"model.height": int(m.model.height * k) // 16 * 16, "model.width": int(m.model.width * k) // 16 * 16}))
                    for k in (0.75, 0.5)])
    if dominant == "backbone weights" and m.model.dtype == "float32":
        out.append([("--set model.dtype=bfloat16", _set({"model.dtype": "bfloat16"}))])
    if dominant == "backbone weights" and _can_shard(req):
        # sharding first: it keeps the videos whole; what still does not fit is activations, shrunk next
        out.append([("--set distributed.shard_backbone=true",
                     lambda base: replace(base, pipeline=_pipeline(base, {"distributed.shard_backbone": True})))])
        out += stages(replace(req, pipeline=_pipeline(req, {"distributed.shard_backbone": True})),
                      "forward 2 saved activations")
    if dominant in ERASER_TERMS:
        if req.mode != "train" and (req.pipeline is None or req.pipeline.distributed.zero_stage == 2):
            out.append([("--set distributed.zero_stage=3",
                         lambda base: replace(base, pipeline=_pipeline(base, {"distributed.zero_stage": 3})))])
        out.append([(f"--set eraser.rank={r}", _set({"eraser.rank": r})) for r in (m.eraser.rank // 2, m.eraser.rank // 4) if r])
    if dominant == "trajectory sampling" and m.train.trajectory.pool_size > 1:
        out.append([(f"--set train.trajectory.pool_size={n}", _set({"train.trajectory.pool_size": n}))
                    for n in (m.train.trajectory.pool_size // 2, 1)])
    return [g for g in out if g]


def _sequence_parallel(req: PlanRequest) -> list[tuple[str, object]]:
    """`distributed.sequence_parallel` P (a divisor of the world size), mildest first: at the same global rows
    (the batch kept; a GPU holds P x the rows at Nv / P tokens: the same activations, except for the rows every
    GPU adds whatever its share -- Wan 2.2 A14B's idle-expert row -- which then span Nv / P tokens), then with the
    rows / P (activations / P; what it buys over fewer rows alone is rows per worker below one)."""
    m, w = req.method, req.world_size
    now = int(getattr(getattr(req.pipeline, "distributed", None), "sequence_parallel", 1) or 1)
    b, p = m.train.batch_size, m.train.preserve_batch_size
    out = []
    for k, cut in [(k, 1) for k in (2, 4, 8)] + [(k, k) for k in (2, 4, 8)]:
        groups = w // (now * k)
        if w % (now * k) or b % cut or p % cut or (b // cut) % groups or (p // cut) % groups:
            continue
        sets = {"train.batch_size": b // cut, "train.preserve_batch_size": p // cut}
        label = f"--set distributed.sequence_parallel={now * k}" + (
            f" --set train.batch_size={b // cut} --set train.preserve_batch_size={p // cut}" if cut > 1 else "")
        out.append((label, lambda base, s=sets, n=now * k: (lambda r: replace(r, pipeline=_pipeline(
            r, {"distributed.sequence_parallel": n, "distributed.num_workers": w})))(_with(base, s))))
    return out


def _can_shard(req: PlanRequest) -> bool:
    """Whether `distributed.shard_backbone` is a fix the request can take (several workers, not yet sharded)."""
    d = getattr(req.pipeline, "distributed", None)
    return req.mode != "train" and req.world_size > 1 and not getattr(d, "shard_backbone", False)


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
        fix, fixed, fixed_plan = _fix_along(req, groups)
        if fix["fits"]:
            after = next((t.bytes for t in fixed_plan.terms if t.name == term.name), None)
            return {**fix, "shrinks": term.name, "term_gb": round(term.bytes / GIB, 2),
                    "term_gb_after": None if after is None else round(after / GIB, 2), "costs": costs(req, fixed)}
        tried.append(fix)
    dominant = plan.dominant.name
    hint = {
        "backbone weights": "the frozen backbone does not fit one GPU: train distributed with "
                            "distributed.shard_backbone: true (1/N of it per GPU) or use a GPU with more memory",
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


def _fix_along(req: PlanRequest, groups) -> tuple[dict, PlanRequest | None, MemoryPlan | None]:
    """(the fix, the request with it applied and its plan when it fits)."""
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
                return {"setting": " ".join(applied + [label]), "peak_gb": round(p.peak_bytes / GIB, 2), "fits": True}, cand, p
            strongest = (label, cand, p)
        if strongest is not None:
            applied.append(strongest[0])
            base, last_peak = strongest[1], round(strongest[2].peak_bytes / GIB, 2)
    return {"setting": None, "fits": False, "tried": " ".join(applied) or None, "tried_peak_gb": last_peak}, None, None


def costs(req: PlanRequest, fixed: PlanRequest) -> list[str]:
    """What the fixed run gives up, one phrase per setting that differs from the planned request (in the order
    `stages` tries them)."""
    m, f = req.method, fixed.method
    out = []
    if f.train.gradient_checkpointing and not m.train.gradient_checkpointing:
        out.append("each block's forward runs again in backward (slower steps)")
    if f.loss.attn_chunk != m.loss.attn_chunk:
        out.append(f"attention capture in chunks of {f.loss.attn_chunk} instead of {m.loss.attn_chunk} (slower)")
    if (f.train.batch_size, f.train.preserve_batch_size) != (m.train.batch_size, m.train.preserve_batch_size):
        out.append(f"{f.train.batch_size} concept + {f.train.preserve_batch_size} preserve rows per step instead of "
                   f"{m.train.batch_size} + {m.train.preserve_batch_size} (noisier steps)")
    if fixed.world_size != req.world_size:
        out.append(f"{fixed.world_size} GPUs instead of {req.world_size}")
    if f.model.num_frames != m.model.num_frames:
        out.append(f"trains on videos of {f.model.num_frames} frames instead of {m.model.num_frames}")
    if (f.model.height, f.model.width) != (m.model.height, m.model.width):
        out.append(f"trains at {f.model.height}x{f.model.width} instead of {m.model.height}x{m.model.width}")
    shard = [bool(getattr(getattr(r.pipeline, "distributed", None), "shard_backbone", False)) for r in (req, fixed)]
    if shard[1] and not shard[0]:
        out.append(f"backbone sharded over {fixed.world_size} GPUs (each block all-gathered before it runs, in both "
                   "forwards and the recompute: more traffic)")
    sp = [int(getattr(getattr(r.pipeline, "distributed", None), "sequence_parallel", 1) or 1) for r in (req, fixed)]
    if sp[1] != sp[0]:
        out.append(f"each video's tokens split over {sp[1]} GPUs (4 all-to-alls per self-attention: more traffic)")
    zero = [getattr(getattr(r.pipeline, "distributed", None), "zero_stage", None) for r in (req, fixed)]
    if zero[0] != zero[1]:
        out.append(f"ZeRO-{zero[1]} instead of ZeRO-{zero[0] or 2} (eraser weights gathered every step: more traffic)")
    if f.model.dtype != m.model.dtype:
        out.append(f"backbone in {f.model.dtype} instead of {m.model.dtype}")
    if f.eraser.rank != m.eraser.rank:
        out.append(f"eraser rank {f.eraser.rank} instead of {m.eraser.rank} (less capacity)")
    if f.train.trajectory.pool_size != m.train.trajectory.pool_size:
        out.append(f"trajectory pool of {f.train.trajectory.pool_size} instead of {m.train.trajectory.pool_size}")
    return out


def refusal(plan: MemoryPlan, fix: dict) -> str:
    head = (f"will not fit: peak {plan.peak_bytes / GIB:.1f} GB per GPU > {USABLE_FRACTION:.0%} of "
            f"{plan.capacity_bytes / GIB:.1f} GB; dominant term: {plan.dominant.name} ({plan.dominant.gb:.1f} GB)")
    if fix.get("setting"):
        after = "" if fix.get("term_gb_after") is None else f" -> {fix['term_gb_after']:.1f}"
        shrinks = f'shrinks "{fix["shrinks"]}" {fix["term_gb"]:.1f}{after} GB, ' if fix.get("term_gb") is not None else ""
        cost = f"; costs: {', '.join(fix['costs'])}" if fix.get("costs") else ""
        return f"{head}. Fix: {fix['setting']} ({shrinks}peak -> {fix['peak_gb']} GB{cost})"
    tried = f" (tried {fix['tried']}: peak {fix['tried_peak_gb']} GB)" if fix.get("tried") else ""
    return f"{head}. {fix['hint']}{tried}"
