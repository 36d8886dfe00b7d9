"""What every family's block accounting of the memory plan shares (`t2vu plan`, pipelines.plan.memory_plan).

`pipelines.plan.memory_plan` sums the family-independent terms (weights, erasers, optimizer, capture
results, trajectory pool, evals); the activation terms depend on how a family's block is built,
so each family counts them in its own file next to its spec (`unlearn/models/<family>_memory.py`),
registered with the family (`families.memory_blocks(family)`); this module holds what they share.

Every count below was enumerated with autograd saved-tensor hooks on the real diffusers block
(`torch.autograd.graph.saved_tensors_hooks`, tensors deduplicated by storage, parameters left
out): a frozen Linear saves nothing (its weight needs no grad), SDPA (flash / efficient kernels,
CPU and CUDA alike) saves q, k, v, out and the logsumexp, a LayerNorm / RMSNorm saves its input
and [rows, tokens, 1] statistics. `tests/test_memory_plan.py` re-counts the Wan block with the
hooks at fp32 and bf16, both eraser sites and per-token timesteps, against `WanBlocks.saved_*`.
"""

from __future__ import annotations

from dataclasses import replace

GIB = 2**30


def unit(rows: int, tokens: int, hidden: int, nbytes: int) -> float:
    return float(rows) * tokens * hidden * nbytes


# The functions below take `pipelines.plan.memory_plan.PlanInputs` (`x`, duck-typed: this module imports
# nothing of the plan's) and return activation terms as (name, bytes, note) for forward 2 + backward.


def inner_rows(x):
    """The adversarial inner attack's pass (loss.adv_steps): the B concept rows alone, with grad w.r.t. their text
    embedding (so every block saves, the first included), no energy record; its graph is freed after each pass."""
    return replace(x, preserve_rows=0, extra_rows=0, capture_layers=0)


def energy_terms(x) -> tuple[float, float]:
    """(energy records kept, fp32 copy of the concept rows' eraser output saved per eraser)."""
    b, nv = x.concept_rows, x.video_tokens
    if not x.capture_layers:
        return 0.0, 0.0
    return 4.0 * b * nv * len(x.eraser_blocks), 4.0 * b * nv * x.hidden


def eraser_one(x, r2: int) -> float:
    """One eraser's saved tensors: its input [R2, Nv, D], the [R2, Nv, r] down output and GELU output, fp32 (the
    eraser's weights' dtype) -- or, under autocast, the act-dtype copies its Linears cast them to (CPU and CUDA alike:
    linear is on both lower-precision lists)."""
    e = float(x.act_bytes) if x.autocast else 4.0
    return e * r2 * x.video_tokens * x.hidden + 2 * e * r2 * x.video_tokens * x.eraser_rank + energy_terms(x)[1]


def grad_pass_terms(x, saved: float, note: str, ckpt_saved: float, block: float, grads: float,
              grads_note: str) -> list[tuple[str, float, str]]:
    b, r2, nv = x.concept_rows, x.concept_rows + x.preserve_rows + x.extra_rows, x.video_tokens
    energy = energy_terms(x)[0]
    n_erasers = len(x.eraser_blocks)
    if x.checkpointing:
        return [
            ("forward 2 saved activations", ckpt_saved, f"R2={r2} rows; checkpointing: block inputs + final norm"),
            ("eraser energy records", energy, f"[{b}, {nv}] fp32 x {n_erasers} blocks"),
            ("backward recompute + grads", block + eraser_one(x, r2) + grads,
             "one block's saved tensors + its eraser tensors again, and the gradients in flight"),
        ]
    return [
        ("forward 2 saved activations", saved, f"R2={r2} rows; " + note),
        ("eraser saved activations", eraser_one(x, r2) * n_erasers + energy,
         f"fp32 input copy [R2, Nv, D]{' + [B, Nv, D] energy copy' if x.capture_layers else ''} per eraser x {n_erasers}"),
        ("backward grads in flight", grads, grads_note),
    ]
