"""Will it fit? Per-GPU memory of an eraser training, predicted from numbers alone.

`plan_memory(PlanInputs) -> MemoryPlan` is a pure function: no model, no torch. The inputs
(`pipelines.memory_check.plan_inputs`) come from the config and the architecture's configs.

What is counted, and why each term has its size (U(R) = R rows x N tokens x D x act bytes,
N = Nv video + Nt text tokens; the fused step is `unlearn/step.py`):
- always resident: the frozen backbone in the model dtype; the fp32 erasers, their grads and
  AdamW state (plain AdamW single-process; DeepSpeed ZeRO-2/3 shards the state over the world);
  the CUDA context (not in `torch.cuda.max_memory_allocated`).
- forward 1 (no grad, erasers off, R1 = B + B*K + P rows): at one block's feed-forward, the
  block input (the caller still holds it), the new residual, the FF input and its 4D-wide
  projection and GELU output: 11 U counted, 12 U(R1) measured on CPU (NO_GRAD_FORWARD_U).
  Attention capture of the B concept rows keeps [B, Nv, Nt] fp32 per captured layer until the
  next step and, per query chunk, scores [B, H, c, c] fp32 twice (scores, logsumexp's shifted
  copy) next to the block's 7 U(R1) of attention-time tensors (input, norms, joint input, q, k, v).
- forward 2 + backward (R2 = B + P rows, grad into the erasers only): a frozen Linear saves no
  input (its weight needs no grad), so a block saves its GELU input (4 U), SDPA's q, k, v, out
  (4 U; flash/efficient kernels, CUDA and CPU alike, save no probabilities), the q/k LayerNorm
  inputs (2 U) and the two AdaLN-norm inputs (2 U): 12 U per block after the first erased one
  (the first saves 5 U: nothing before its eraser needs grad). Each eraser saves an fp32 copy of
  its [R2, Nv, D] input and two [R2, Nv, r] tensors; the energy record keeps [B, Nv] fp32 and
  saves an fp32 copy of the concept rows' [B, Nv, D] eraser output. With gradient checkpointing a
  block keeps only its inputs (1 U) and backward recomputes one block at a time (its 12 U and
  eraser tensors again). Backward adds the gradients in flight at the widest op, the GELU:
  grad-out and grad-in of [R2, N, 4D] plus the residual's gradients: 10 U(R2).
- trajectory sampling (xt_source trajectory): a no-grad forward of 2 x pool rows (CFG).
- trial evaluations (tune/run): a proxy eval in rank 0 loads T5 + VAE next to training and generates
  on the training transformer (CFG forward of 2 rows, VAE decoding: estimates); the final eval
  runs after fit() on eval actors, one whole pipeline per freed GPU (its own phase).
- host memory: the trajectory pool (prompts x pool x steps latents in the model dtype).

Calibrated on CPU by `benchmarks/memory_plan_check.py` (README: "Will it fit?").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

GIB = 2**30
USABLE_FRACTION = 0.95  # headroom for the caching allocator's fragmentation
CUDA_CONTEXT_BYTES = 1.0 * GIB  # CUDA context, cuBLAS/NCCL workspaces: outside torch's allocator
NO_GRAD_FORWARD_U = 12  # peak of a no-grad forward in U (11 counted from the code, 12 measured on CPU)
PERSISTENT = "all"
F1, F2 = "forward 1", "forward 2 + backward"
STEP = "forward 1 to backward"  # kept through both forwards and the backward
SAMPLING, HOST = "trajectory sampling", "host"
PROXY, FINAL = "proxy eval (rank 0)", "final eval (eval actor)"  # FINAL: its own process, nothing of training


@dataclass(frozen=True)
class EvalShape:
    """A trial evaluation's pipeline on a GPU: the proxy eval in rank 0 (on the training transformer)
    or the final eval on an eval actor (a whole pipeline, after the trainer freed the GPU)."""

    weight_bytes: int  # T5/VAE (and, final, transformer) dtype
    act_bytes: int
    video_tokens: int
    num_frames: int
    height: int
    width: int
    vae_tiling: bool
    with_transformer: bool  # final eval: loads its own transformer; proxy: reuses the training one


@dataclass(frozen=True)
class TrajectoryShape:
    prompts: int
    pool_size: int
    steps: int


@dataclass(frozen=True)
class PlanInputs:
    # architecture
    hidden: int
    heads: int
    head_dim: int
    layers: int
    text_len: int
    params_transformer: int
    params_text_encoder: int
    params_vae: int
    vae_channels: int  # first VAE block's channels (widest decoder feature maps)
    pos_embed_elems: int  # the sincos positional-embedding buffer (models without RoPE), model dtype
    # geometry of one training video
    video_tokens: int
    latent_elems: int
    # rows per GPU
    concept_rows: int
    references: int
    preserve_rows: int
    # method
    eraser_rank: int
    eraser_blocks: tuple[int, ...]
    capture_layers: int  # 0 when loss.w_localize is 0
    attn_chunk: int
    weight_bytes: int
    act_bytes: int
    checkpointing: bool
    # optimisation
    world_size: int = 1
    zero_stage: int | None = None  # None: single process, plain AdamW
    reduce_bucket: int = 50_000_000  # DeepSpeed reduce_bucket_size (elements)
    trajectory: TrajectoryShape | None = None
    proxy_eval: EvalShape | None = None
    final_eval: EvalShape | None = None
    device: str = "cuda"
    capacity_bytes: int | None = None


@dataclass
class Term:
    name: str
    bytes: float
    phase: str
    note: str
    where: str = "gpu"

    @property
    def gb(self) -> float:
        return self.bytes / GIB


@dataclass
class MemoryPlan:
    terms: list[Term]
    phases: dict[str, float]  # phase -> bytes per GPU during it (training phases include the resident terms)
    peak_bytes: float
    peak_phase: str
    capacity_bytes: int | None
    dominant: Term
    context: dict = field(default_factory=dict)

    @property
    def fits(self) -> bool | None:
        if self.capacity_bytes is None:
            return None
        return self.peak_bytes <= USABLE_FRACTION * self.capacity_bytes

    @property
    def allocated_peak_bytes(self) -> float:
        """The peak as `torch.cuda.max_memory_allocated` would see it (no CUDA context)."""
        return self.peak_bytes - sum(t.bytes for t in self.terms if t.name == "CUDA context")

    def live_terms(self) -> list[Term]:
        """The GPU terms alive at the peak, largest first."""
        if self.peak_phase == FINAL:
            return sorted((t for t in self.terms if t.phase == FINAL or t.name == "CUDA context"), key=lambda t: -t.bytes)
        live = (PERSISTENT, self.peak_phase) + ((STEP,) if self.peak_phase in (F1, F2, PROXY) else ())
        return sorted((t for t in self.terms if t.where == "gpu" and t.phase in live), key=lambda t: -t.bytes)

    def host_bytes(self) -> float:
        return sum(t.bytes for t in self.terms if t.where == "host")

    def summary(self) -> dict:
        r = lambda b: round(b / GIB, 3)  # noqa: E731
        return {
            "peak_gb_per_gpu": r(self.peak_bytes),
            "allocated_peak_gb": r(self.allocated_peak_bytes),
            "fits": self.fits,
            "gpu_memory_gb": None if self.capacity_bytes is None else r(self.capacity_bytes),
            "usable_fraction": USABLE_FRACTION,
            "peak_phase": self.peak_phase,
            "dominant_term": self.dominant.name,
            "host_gb": r(self.host_bytes()),
            "terms": {t.name: r(t.bytes) for t in self.terms},
            "phases": {k: r(v) for k, v in self.phases.items()},
            **self.context,
        }

    def to_json(self) -> str:
        return json.dumps(self.summary())


def unit(rows: int, tokens: int, hidden: int, nbytes: int) -> float:
    return float(rows) * tokens * hidden * nbytes


def eraser_parameters(hidden: int, rank: int, blocks: int) -> int:
    return blocks * (2 * hidden * rank + rank + hidden)  # down D->r and up r->D, with biases


def optimizer_terms(n: int, world: int, stage: int | None, bucket: int) -> list[Term]:
    """Eraser parameters, gradients and AdamW state (all fp32; the erasers always train in fp32)."""
    p = 4.0 * n
    if stage is None:
        return [Term("eraser parameters", p, PERSISTENT, f"{n / 1e6:.1f}M fp32"),
                Term("eraser gradients", p, PERSISTENT, "fp32, alive from backward to the next zero_grad"),
                Term("optimizer state", 2 * p, PERSISTENT, "AdamW exp_avg + exp_avg_sq, fp32")]
    shard = p / world
    grad_buf = 4.0 * bucket  # DeepSpeed allocates the whole reduce bucket, however small the model
    params = p if stage == 2 else shard + p  # ZeRO-3 gathers every eraser for the step (live max 1e9)
    return [
        Term("eraser parameters", params, PERSISTENT,
             f"{n / 1e6:.1f}M fp32" + ("" if stage == 2 else f", 1/{world} shard + gathered for the step")),
        Term("eraser gradients", grad_buf + shard, PERSISTENT, f"ZeRO-{stage}: reduce bucket + 1/{world} partition"),
        Term("optimizer state", 3 * shard, PERSISTENT, f"ZeRO-{stage}: fp32 master + AdamW moments, 1/{world} each"),
    ]


def capture_terms(x: PlanInputs, n_tokens: int) -> tuple[Term, Term]:
    """Attention capture of the concept rows: results kept per layer, and one chunk's scratch."""
    b, h, dh, nv, nt = x.concept_rows, x.heads, x.head_dim, x.video_tokens, x.text_len
    probs = 4.0 * b * nv * nt * x.capture_layers
    cq, ck = min(x.attn_chunk, nv), min(x.attn_chunk, n_tokens)
    copy = 4.0 * b * h * ck * dh if x.act_bytes != 4 else 0.0  # .float() of a bf16 key chunk
    scores = 2 * 4.0 * b * h * cq * ck + copy
    text = 3 * 4.0 * b * h * cq * nt  # q k_text^T, minus lse, exp
    scratch = max(scores, text) + 4.0 * b * h * (cq + (nt if x.act_bytes != 4 else 0)) * dh
    return (
        Term("attention-capture results", probs, STEP,
             f"[{b}, {nv}, {nt}] fp32 x {x.capture_layers} layers, held until the next step's forward 1"),
        Term("attention-capture scratch", scratch, F1,
             f"chunk {x.attn_chunk}: [{b}, {h}, {cq}, {ck}] fp32 scores x2 (transient)"),
    )


def forward2_terms(x: PlanInputs, n_tokens: int) -> list[Term]:
    b, p, d, nv, e = x.concept_rows, x.preserve_rows, x.hidden, x.video_tokens, x.act_bytes
    r2 = b + p
    u = unit(r2, n_tokens, d, e)
    first = min(x.eraser_blocks)
    graph_blocks = x.layers - first  # blocks whose outputs need grad
    n_erasers = len(x.eraser_blocks)
    energy = 4.0 * b * nv * n_erasers if x.capture_layers else 0.0
    energy_copy = 4.0 * b * nv * d if x.capture_layers else 0.0  # saved by the energy's pow, per eraser
    eraser_one = 4.0 * r2 * nv * d + 2 * 4.0 * r2 * nv * x.eraser_rank + energy_copy
    final_norms = 2 * unit(r2, nv, d, e)  # norm_final and norm_out LayerNorm inputs
    block_saved = 12 * u
    grads = 10 * u
    if x.checkpointing:
        saved = graph_blocks * u + final_norms
        note = f"checkpointing: block inputs {graph_blocks} x 1 U + final norms"
        recompute = block_saved + eraser_one + grads
        return [
            Term("forward 2 saved activations", saved, F2, f"R2={r2} rows; " + note + f"; U={u / GIB:.3g} GB"),
            Term("eraser energy records", energy, F2, f"[{b}, {nv}] fp32 x {n_erasers} blocks"),
            Term("backward recompute + grads", recompute, F2, "one block's 12 U + its eraser tensors again, 10 U of grads"),
        ]
    saved = (5 * u + 12 * u * (graph_blocks - 1) + final_norms) if graph_blocks else 0.0
    return [
        Term("forward 2 saved activations", saved, F2,
             f"R2={r2} rows; 12 U x {graph_blocks - 1} blocks + 5 U + final norms; U={u / GIB:.3g} GB"),
        Term("eraser saved activations", eraser_one * n_erasers + energy, F2,
             f"fp32 input copy [R2, Nv, D] + [B, Nv, D] energy copy per eraser x {n_erasers}"),
        Term("backward grads in flight", grads, F2, "GELU grad-out + grad-in [R2, N, 4D] + residual grads: 10 U"),
    ]


def eval_terms(x: PlanInputs, ev: EvalShape, phase: str) -> list[Term]:
    params = x.params_text_encoder + x.params_vae + (x.params_transformer if ev.with_transformer else 0)
    parts = ("transformer + " if ev.with_transformer else "") + "T5 + VAE"
    fwd = NO_GRAD_FORWARD_U * unit(2, ev.video_tokens + x.text_len, x.hidden, ev.act_bytes)  # CFG: 2 rows
    th, tw = (ev.height // 2, ev.width // 2) if ev.vae_tiling else (ev.height, ev.width)
    vae = 8.0 * x.vae_channels * 9 * th * tw * ev.act_bytes  # ~8 live maps of 9 frames at the tile size
    where = "one pipeline per freed GPU" if ev.with_transformer else "on the training transformer, erasers toggled"
    name = phase.split(" (")[0]
    return [
        Term(f"{name} weights", params * ev.weight_bytes, phase, f"{parts} ({params / 1e9:.2f}B params), {where}"),
        Term(f"{name} activations", max(fwd, vae), phase,
             f"{ev.num_frames}x{ev.height}x{ev.width}: max(CFG forward of 2 rows, VAE decode"
             f"{' tiled' if ev.vae_tiling else ''}); estimate, not calibrated"),
    ]


def plan_memory(x: PlanInputs) -> MemoryPlan:
    """All terms, the per-phase sums and the peak per GPU (see the module docstring)."""
    n = x.video_tokens + x.text_len
    e = x.act_bytes
    terms = [Term("backbone weights", float(x.params_transformer + x.pos_embed_elems) * x.weight_bytes, PERSISTENT,
                  f"{x.params_transformer / 1e9:.2f}B params x {x.weight_bytes} B"
                  + (f" + positional-embedding buffer {x.pos_embed_elems / 1e6:.1f}M" if x.pos_embed_elems else ""))]
    n_er = eraser_parameters(x.hidden, x.eraser_rank, len(x.eraser_blocks))
    terms += optimizer_terms(n_er, x.world_size, x.zero_stage, x.reduce_bucket)
    if x.device == "cuda":
        terms.append(Term("CUDA context", CUDA_CONTEXT_BYTES, PERSISTENT, "context + library workspaces (not allocated)"))
    r1 = x.concept_rows * (1 + x.references) + x.preserve_rows
    u1 = unit(r1, n, x.hidden, e)
    f1 = Term("forward 1 activations", NO_GRAD_FORWARD_U * u1, F1,
              f"R1={r1} rows, no grad: {NO_GRAD_FORWARD_U} U; U={u1 / GIB:.3g} GB")
    terms.append(f1)
    probs = scratch = None
    if x.capture_layers:
        probs, scratch = capture_terms(x, n)
        terms += [probs, scratch]
    f2 = forward2_terms(x, n)
    terms += f2
    kept = probs.bytes if probs else 0.0
    resident = sum(t.bytes for t in terms if t.phase == PERSISTENT and t.where == "gpu")
    phases = {F1: resident + kept + max(f1.bytes, 7 * u1 + (scratch.bytes if scratch else 0.0)),
              F2: resident + kept + sum(t.bytes for t in f2)}
    if x.trajectory is not None:
        tr = x.trajectory
        rows = 2 * tr.pool_size
        fwd = NO_GRAD_FORWARD_U * unit(rows, n, x.hidden, e)
        states = 4.0 * tr.steps * tr.pool_size * x.latent_elems
        terms.append(Term(SAMPLING, fwd + states, SAMPLING, f"CFG forward of {rows} rows, no grad + one prompt's fp32 states"))
        phases[SAMPLING] = resident + fwd + states
        terms.append(Term("trajectory pool", float(tr.prompts * tr.pool_size * tr.steps * x.latent_elems * x.weight_bytes),
                          HOST, f"{tr.prompts} prompts x {tr.pool_size} x {tr.steps} states, model dtype (this rank)",
                          where="host"))
    if x.proxy_eval is not None:  # between steps: the capture results are still held
        ev = eval_terms(x, x.proxy_eval, PROXY)
        terms += ev
        phases[PROXY] = resident + kept + sum(t.bytes for t in ev)
    if x.final_eval is not None:
        ev = eval_terms(x, x.final_eval, FINAL)
        terms += ev
        phases[FINAL] = sum(t.bytes for t in ev) + (CUDA_CONTEXT_BYTES if x.device == "cuda" else 0.0)
    peak_phase = max(phases, key=phases.get)
    plan = MemoryPlan(terms, phases, phases[peak_phase], peak_phase, x.capacity_bytes, terms[0])
    plan.dominant = plan.live_terms()[0]
    return plan
