"""Will it fit? Per-GPU memory of an eraser training, predicted from numbers alone.

`plan_memory(PlanInputs) -> MemoryPlan` is a pure function: no model, no torch. The inputs
(`pipelines.plan.memory_check.plan_inputs`) come from the config and the architecture's configs.

What is counted, and why each term has its size (the fused step is `unlearn/step.py`). The
activation terms depend on the family's block and are counted in `unlearn/models/<family>_memory.py`
(CogVideoX as below; Wan: self-attention over the video tokens, cross-attention to 512 text keys,
an ffn_dim-wide FFN, fp32 norms, per-token AdaLN on Wan 2.2 TI2V -- see that module); Wan 2.2
A14B keeps both experts resident and one eraser set (with its optimizer state) per expert, while
a forward runs one expert, so its activation terms are one transformer's. For CogVideoX,
U(R) = R rows x N tokens x D x act bytes, N = Nv video + Nt text tokens:
- always resident: the frozen backbone in the model dtype; the fp32 erasers, their grads and
  AdamW state (plain AdamW single-process; DeepSpeed ZeRO-2/3 shards the state over the world);
  the CUDA context (not in `torch.cuda.max_memory_allocated`).
- forward 1 (no grad, erasers off, R1 = B + B*K + P rows): at one block's feed-forward, the
  block input (the caller still holds it), the new residual, the FF input and its 4D-wide
  projection and GELU output: 11 U counted, 12 U(R1) measured on CPU (NO_GRAD_FORWARD_U).
  Attention capture of the B concept rows keeps [B, Nv, Nt] fp32 per captured layer until the
  next step; its scratch is the SDPA kernel's log-sum-exp [R1, H, N] fp32 (the joint softmax's
  normaliser, which the block's attention computes anyway) and, per query chunk, the text scores
  [B, H, c, Nt] fp32 (worked in place) and the fp32 q chunk, next to the block's 7 U(R1) of
  attention-time tensors (input, norms, joint input, q, k, v).
- forward 2 + backward (R2 = B + P rows, grad into the erasers only): a frozen Linear saves no
  input (its weight needs no grad), so a block saves its GELU input (4 U), SDPA's q, k, v, out
  (4 U; flash/efficient kernels, CUDA and CPU alike, save no probabilities), the q/k LayerNorm
  inputs (2 U) and the two AdaLN-norm inputs (2 U): 12 U per block after the first erased one
  (the first saves 5 U: nothing before its eraser needs grad). Under CUDA autocast the norms run in
  fp32 (torch's CUDA list, not CPU's: `PlanInputs.fp32_ops`), so the 4 norm inputs are saved as fp32
  copies and the norms' fp32 outputs widen the attention-time and no-grad peaks (unlearn/models/
  cogvideox_memory.py: +2.2 GB at 2B with 4+4 rows and checkpointing). Each eraser saves an fp32 copy of
  its [R2, Nv, D] input and two [R2, Nv, r] tensors; the energy record keeps [B, Nv] fp32 and
  saves an fp32 copy of the concept rows' [B, Nv, D] eraser output. With gradient checkpointing a
  block keeps only its inputs (1 U) and backward recomputes one block at a time (its 12 U and
  eraser tensors again). Backward adds the gradients in flight at the widest op, the GELU:
  grad-out and grad-in of [R2, N, 4D] plus the residual's gradients: 10 U(R2).
- adversarial training (loss.adv_steps > 0): forward 2 runs the B adversarial rows too (and, with
  loss.w_anchor_preserve, B anchor rows: R2 = 2B + P or 3B + P); before it, each of the adv_steps
  inner passes runs the B concept rows with grad w.r.t. their text embedding (every block saves,
  the first one whole; no energy record) and frees its graph: its own phase, one pass at a time.
- trajectory sampling (xt_source trajectory): a no-grad forward of 2 x pool rows (CFG).
- trial evaluations (tune/run): a proxy eval in rank 0 loads the VAE next to training and generates
  on the training transformer (CFG forward of 2 rows, VAE decoding: estimates); the final eval
  runs after fit() on eval actors, one pipeline without its text encoder per freed GPU (its own phase):
  the search fills the text-embedding cache with every eval prompt first.
- host memory: the trajectory pool (prompts x pool x steps latents in the model dtype), and with a `bank:` the
  bank's rows (every attacked restart's x_t states, fp32; also written into each round's bank.pt).

Calibrated on CPU by `benchmarks/memory_plan_check.py` (`--family wan`: the Wan sizes; docs/memory-plan.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from unlearn.models.cogvideox_memory import NO_GRAD_FORWARD_U  # noqa: F401 (re-exported)
from unlearn.models.families import memory_blocks as blocks_for
from unlearn.models.memory_terms import GIB, unit

USABLE_FRACTION = 0.95  # headroom for the caching allocator's fragmentation
CUDA_CONTEXT_BYTES = 1.0 * GIB  # CUDA context, cuBLAS/NCCL workspaces: outside torch's allocator
PERSISTENT = "all"
F1, F2 = "forward 1", "forward 2 + backward"
STEP = "forward 1 to backward"  # kept through both forwards and the backward
SAMPLING, HOST = "trajectory sampling", "host"
ADV = "adversarial inner pass"  # loss.adv_steps: between forward 1 and forward 2
ADV_NAMES = {"forward 2 saved activations": "adv pass saved activations", "eraser saved activations":
             "adv pass eraser activations", "backward recompute + grads": "adv pass recompute + grads",
             "backward grads in flight": "adv pass grads in flight", "eraser energy records": "adv pass energy records"}
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
    # a search fills the text-embedding cache with every eval prompt before its trials (pipelines.search.eval_pool):
    # its eval workers then load no text encoder (T5-XXL: 4.8B params, ~9.5 GB in bf16)
    text_encoder: bool = False


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
    bank_latents: int = 0  # fp32 x_t latents the `bank:` rounds keep on the host (bank_latents(), unlearn.bank_training)
    proxy_eval: EvalShape | None = None
    final_eval: EvalShape | None = None
    device: str = "cuda"
    capacity_bytes: int | None = None
    # family (unlearn/models/<family>_memory.py): block structure, eraser site, Wan 2.2's per-token timesteps and experts
    family: str = "cogvideox"
    ffn_dim: int = 0  # FFN width (CogVideoX: 4 x hidden)
    eraser_site: str = "attn2"  # Wan: attn2 (family wan) or attn1 (wan-attn1)
    expand_timesteps: bool = False
    experts: int = 1  # transformers resident at once (Wan 2.2 A14B: 2, one eraser set each)
    eraser_sites: int = 0  # erasers over all experts (0: len(eraser_blocks)); eraser_blocks: one expert's positions
    extra_rows: int = 0  # A14B: when all rows go to one expert, the idle one runs a zero-weight row (forward 2 + backward)
    adv_steps: int = 0  # loss.adv_steps: inner attack passes a step (B adversarial rows join forward 2)
    anchor_preserve: bool = False  # loss.w_anchor_preserve > 0: B anchor rows join forward 2
    # ops the training forwards' autocast runs in fp32 on the planned device, read from torch's own autocast kernels
    # (unlearn/models/autocast_rules.py; CUDA: the norms, CPU: none); empty without autocast. The trajectory sampler and
    # the evals run without autocast: their terms ignore it.
    fp32_ops: frozenset = frozenset()
    autocast: bool = False  # train.autocast bf16: the erasers' Linears save act-dtype copies of their inputs
    # unlearn.sharding (FSDP2, issue 23): each of the world_size ranks keeps 1/world of every block's weights and
    # gathers one block while it runs (two experts: one more in backward, see there)
    shard_backbone: bool = False
    # unlearn.sequence_parallel (Ulysses, issue 23): each sample's video tokens split over this many ranks (the rows
    # above are then each group's share of the batch): activations and the capture's results span ceil(Nv / P) video
    # tokens (+ all text tokens)
    sequence_parallel: int = 1


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
        live = (PERSISTENT, self.peak_phase) + ((STEP,) if self.peak_phase in (F1, F2, ADV, PROXY) else ())
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
    """Attention capture of the concept rows (`unlearn/attention.py`): results kept per layer, and its scratch.

    n_tokens: the keys the capture's queries attend to (joint attention: Nt + Nv; cross attention: Nt).
    Joint attention takes each query's log-sum-exp from the SDPA kernel the block runs anyway ([R1, H, N] fp32,
    held while the text columns are computed); cross attention needs none. Then per chunk of c video queries:
    the fp32 q chunk (plus its `.float()` copy from a bf16 q) and the [B, H, c, Nt] fp32 text scores, worked in
    place, with the fp32 text keys [B, H, Nt, dh] (a copy from bf16) and the [B, c, Nt] head mean.
    """
    b, h, dh, nv, nt = x.concept_rows, x.heads, x.head_dim, x.video_tokens, x.text_len
    probs = 4.0 * b * nv * nt * x.capture_layers
    cq, up = min(x.attn_chunk, nv), x.act_bytes != 4
    joint = n_tokens != nt
    r1 = x.concept_rows * (1 + x.references) + x.preserve_rows
    lse = 4.0 * r1 * h * n_tokens if joint else 0.0
    text_keys = 4.0 * b * h * nt * dh if up else 0.0
    q_chunk = 4.0 * b * h * cq * dh * (2 if up else 1)
    scores = 4.0 * b * h * cq * nt
    reductions = 4.0 * b * cq * nt + (0.0 if joint else 2 * 4.0 * b * h * cq)  # head mean; row max and sum (cross)
    scratch = lse + text_keys + q_chunk + scores + reductions
    what = f"kernel lse [{r1}, {h}, {n_tokens}] fp32 + " if joint else ""
    return (
        Term("attention-capture results", probs, STEP,
             f"[{b}, {nv}, {nt}] fp32 x {x.capture_layers} layers, held until the next step's forward 1"),
        Term("attention-capture scratch", scratch, F1,
             f"{what}chunk {x.attn_chunk}: [{b}, {h}, {cq}, {nt}] fp32 text scores + q chunk (transient)"),
    )


def eval_terms(x: PlanInputs, ev: EvalShape, phase: str, blocks) -> list[Term]:
    params = (x.params_text_encoder if ev.text_encoder else 0) + x.params_vae + (
        x.experts * x.params_transformer if ev.with_transformer else 0)
    parts = ("transformer" + (f"s x {x.experts}" if x.experts > 1 else "") + " + " if ev.with_transformer else "") + (
        blocks.encoders if ev.text_encoder else blocks.encoders.split(" + ")[-1] + " (prompts from the filled cache)")
    fwd = blocks.no_grad_forward(replace(x, fp32_ops=frozenset()), 2, ev.video_tokens, ev.act_bytes)  # CFG: 2 rows
    th, tw = (ev.height // 2, ev.width // 2) if ev.vae_tiling else (ev.height, ev.width)
    # ~8 live maps at the tile size over the frames decoded at once: CogVideoX 9, Wan's causal decoder 4 per latent frame
    vae = 8.0 * x.vae_channels * blocks.vae_live_frames * th * tw * ev.act_bytes
    where = "one pipeline per freed GPU" if ev.with_transformer else "on the training transformer, erasers toggled"
    if ev.with_transformer and ev.text_encoder:  # eval.methods needs_text_encoder; the trials' evals read the cache
        where += "; the text encoder for a baseline that runs it itself (SAFREE)"
    name = phase.split(" (")[0]
    return [
        Term(f"{name} weights", params * ev.weight_bytes, phase, f"{parts} ({params / 1e9:.2f}B params), {where}"),
        Term(f"{name} activations", max(fwd, vae), phase,
             f"{ev.num_frames}x{ev.height}x{ev.width}: max(CFG forward of 2 rows, VAE decode"
             f"{' tiled' if ev.vae_tiling else ''}); estimate, not calibrated"),
    ]


def sharded_backbone_terms(x: PlanInputs, experts: str) -> list[Term]:
    """unlearn.sharding: the weights' 1/world share (the positional buffer stays whole), and the gathered
    block(s): a block's weights (params / layers: an upper bound, embedders included) whole, plus the
    all-gather's input copy of this rank's share; two experts: two blocks (the first expert's first block is
    freed only when backward ends). Counted in every training phase: some block is gathered in each."""
    w, wb = x.world_size, x.weight_bytes
    share = Term("backbone weights", float(x.experts * x.params_transformer) * wb / w + x.pos_embed_elems * wb,
                 PERSISTENT, f"{x.params_transformer / 1e9:.2f}B params x {wb} B{experts} / {w} ranks (sharded)")
    block = x.params_transformer / x.layers * wb
    n = 2 if x.experts > 1 else 1
    gathered = Term("gathered backbone blocks", n * block + block / w, PERSISTENT,
                    f"{n} block(s) of {block / 1e9:.2f} GB whole while they run + the all-gather input (1/{w})")
    return [share, gathered]


def sequence_parallel_terms(x: PlanInputs, r1: int, r2: int) -> list[Term]:
    """unlearn.sequence_parallel: one all-to-all's send copy + receive buffer of a [R, Nv/P, D] tensor (transient,
    in each forward), and the all-gathered tokens: the prediction after the output projection (latent-sized:
    the gather's buffers + result), or on Wan 2.2 TI2V (per-token head) the last block's output with the fp32
    input the output norm saves (forward 2 keeps them until backward)."""
    p, d, a = x.sequence_parallel, x.hidden, x.act_bytes
    local = -(-x.video_tokens // p)
    if x.expand_timesteps:
        gathered = Term("gathered video tokens", r2 * float(p * local) * d * (2 * a + 4), F2,
                        f"[{r2}, {x.video_tokens}, {d}] after the last block: gather buffers + result + fp32 norm input")
    else:
        gathered = Term("gathered video tokens", 2.0 * r2 * x.latent_elems * a, F2,
                        f"the prediction of {r2} rows after the output projection: gather buffers + result")
    return [Term("all-to-all buffers (forward 1)", 2.0 * r1 * local * d * a, F1,
                 f"send + receive of one [{r1}, {local}, {d}] tensor (Ulysses, {p} ranks), at the attention"),
            Term("all-to-all buffers", 2.0 * r2 * local * d * a, F2,
                 f"send + receive of one [{r2}, {local}, {d}] tensor (Ulysses, {p} ranks)"), gathered]


def plan_memory(x: PlanInputs) -> MemoryPlan:
    """All terms, the per-phase sums and the peak per GPU (see the module docstring)."""
    full, sp = x, max(1, x.sequence_parallel)
    if sp > 1:  # this rank's video tokens: every activation term below is the shard's, the capture's results too
        x = replace(x, video_tokens=-(-x.video_tokens // sp))
    blocks = blocks_for(x.family)
    n = blocks.tokens(x)  # tokens a block's activations span: CogVideoX Nv + Nt (joint), Wan Nv
    experts = f" x {x.experts} experts (all resident)" if x.experts > 1 else ""
    terms = [Term("backbone weights", float(x.experts * x.params_transformer + x.pos_embed_elems) * x.weight_bytes,
                  PERSISTENT, f"{x.params_transformer / 1e9:.2f}B params x {x.weight_bytes} B" + experts
                  + (f" + positional-embedding buffer {x.pos_embed_elems / 1e6:.1f}M" if x.pos_embed_elems else ""))]
    if x.shard_backbone and x.world_size > 1:
        terms = sharded_backbone_terms(x, experts)
    n_er = eraser_parameters(x.hidden, x.eraser_rank, x.eraser_sites or len(x.eraser_blocks))  # all experts' sets
    terms += optimizer_terms(n_er, x.world_size, x.zero_stage, x.reduce_bucket)
    if x.device == "cuda":
        terms.append(Term("CUDA context", CUDA_CONTEXT_BYTES, PERSISTENT, "context + library workspaces (not allocated)"))
    r1 = x.concept_rows * (1 + x.references) + x.preserve_rows
    f1 = Term("forward 1 activations", blocks.no_grad_forward(x, r1, x.video_tokens, x.act_bytes), F1,
              f"R1={r1} rows, no grad, one block's peak ({x.family.split('-')[0]} blocks)")
    terms.append(f1)
    probs = scratch = None
    if x.capture_layers:  # the capture's keys: CogVideoX text + video, Wan (cross-attention) text only
        probs, scratch = capture_terms(x, n if blocks.tokens(x) != x.video_tokens else x.text_len)
        if sp > 1:  # unlearn.sequence_parallel: a rank captures (and builds the mask of) its own video tokens only
            probs.note += f"; this rank's {x.video_tokens} of {full.video_tokens} video tokens (sequence parallel {sp})"
        terms += [probs, scratch]
    extra = x.concept_rows * (int(x.adv_steps > 0) + int(x.anchor_preserve))  # adversarial / anchor rows in forward 2
    f2 = [Term(name, b, F2, note) for name, b, note in blocks.forward2(replace(x, preserve_rows=x.preserve_rows + extra))]
    a2a_f1 = 0.0
    if sp > 1:
        a2a, *more = sequence_parallel_terms(full, r1, x.concept_rows + x.preserve_rows + extra + x.extra_rows)
        terms.append(a2a)
        f2 += more
        a2a_f1 = a2a.bytes
    terms += f2
    kept = probs.bytes if probs else 0.0
    resident = sum(t.bytes for t in terms if t.phase == PERSISTENT and t.where == "gpu")
    phases = {F1: resident + kept + a2a_f1
              + max(f1.bytes, blocks.attention_time(x, r1) + (scratch.bytes if scratch else 0.0)),
              F2: resident + kept + sum(t.bytes for t in f2)}
    if x.adv_steps:
        adv = [Term(ADV_NAMES[name], b, ADV, f"{note}; {x.adv_steps} passes a step, one at a time")
               for name, b, note in blocks.inner_attack(x) if b]  # (no energy record in the inner pass)
        terms += adv
        phases[ADV] = resident + kept + sum(t.bytes for t in adv)
    if x.trajectory is not None:
        tr = x.trajectory
        rows = 2 * tr.pool_size
        # no autocast; whole videos: the pool is sampled when the session is built, before the sequence is split
        fwd = blocks.no_grad_forward(replace(full, fp32_ops=frozenset()), rows, full.video_tokens, x.act_bytes)
        states = 4.0 * tr.steps * tr.pool_size * x.latent_elems
        terms.append(Term(SAMPLING, fwd + states, SAMPLING, f"CFG forward of {rows} rows, no grad + one prompt's fp32 states"))
        held = resident  # sharded: sampled through the shards (unlearn.xt_sources), the backbone is never whole
        if x.shard_backbone and x.world_size > 1 and x.experts > 1:  # one expert per sampler step and no backward:
            held -= x.params_transformer / x.layers * x.weight_bytes  # one gathered block, not the training's two
        phases[SAMPLING] = held + fwd + states
        terms.append(Term("trajectory pool", float(tr.prompts * tr.pool_size * tr.steps * x.latent_elems * x.weight_bytes),
                          HOST, f"{tr.prompts} prompts x {tr.pool_size} x {tr.steps} states, model dtype (this rank)",
                          where="host"))
    if x.bank_latents:  # after the training, on the host and in each round's checkpoint (bank.pt)
        terms.append(Term("bank rows", 4.0 * x.bank_latents * x.latent_elems, HOST,
                          f"{x.bank_latents} fp32 x_t latents after the last round (unlearn.bank_training; also "
                          "each bank.pt)", where="host"))
    if x.proxy_eval is not None:  # between steps: the capture results are still held
        ev = eval_terms(x, x.proxy_eval, PROXY, blocks)
        terms += ev
        phases[PROXY] = resident + kept + sum(t.bytes for t in ev)
    if x.final_eval is not None:
        ev = eval_terms(x, x.final_eval, FINAL, blocks)
        terms += ev
        phases[FINAL] = sum(t.bytes for t in ev) + (CUDA_CONTEXT_BYTES if x.device == "cuda" else 0.0)
    peak_phase = max(phases, key=phases.get)
    plan = MemoryPlan(terms, phases, phases[peak_phase], peak_phase, x.capacity_bytes, terms[0])
    plan.dominant = plan.live_terms()[0]
    return plan
