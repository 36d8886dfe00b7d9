"""Shard the frozen backbone across the data-parallel ranks (issue 23, first slice): PyTorch FSDP2.

`shard_backbone(spec, eraser_set)` calls `torch.distributed.fsdp.fully_shard` on every block of the frozen
transformer (and on each other child that holds weights: patch/time/text embedders, output head), per
expert for Wan 2.2 A14B. Each rank keeps 1/N of every such unit; a unit is all-gathered just before it
runs and freed after it (forward, checkpoint recompute, backward). The erasers are NOT sharded: they stay
whole on every rank, outside the backbone's module tree, and whatever trains them today (DeepSpeed's
gradient all-reduce / reduce-scatter over `ErasureObjective`'s parameters) keeps doing so unchanged.

Why FSDP2 and not DeepSpeed ZeRO-3 (measured on this CPU, gloo, torch 2.13 / DeepSpeed 0.19.8, tiny Wan,
2 ranks: `python benchmarks/sharded_step.py --compare-zero3` -> benchmarks/results/sharded_step.json):
- Both are correct here: loss and every eraser gradient equal the single-process step exactly (difference
  0.0), ZeRO-3 with gradient checkpointing too. The frozen-params + checkpointing recompute bug noted in
  configs/deepspeed/zero3.json (DeepSpeed PR #8130) did not show on CPU; it is reported on GPUs, which this
  machine cannot test, and this use (frozen backbone, checkpointed blocks) is exactly its trigger.
- Speed: ZeRO-3 ran 0.70 steps/s (0.78 with checkpointing), FSDP2 4.71, one unsharded process 6.27 (load
  average ~30 on the 2 shared cores; an earlier run at lower load: 0.61 / 7.22 / 6.89). ZeRO-3 fetches and
  releases per submodule through hooks on every module; FSDP2 gathers one block in one all-gather.
- Structure: ZeRO-3 partitions the parameters of the module given to `deepspeed.initialize`, so the
  backbone must be registered inside the engine's model (`ErasureObjective` keeps it out on purpose): the
  engine's module state (checkpoints) would then hold the frozen weights, and the erasers are partitioned
  with it (one stage per engine). FSDP2 shards per module, in place, keeping each module's hooks: the
  eraser forward hooks, the capture processors, `EraserHandle.disabled()` (the reference branch: the same
  sharded model, no copy) and diffusers' non-reentrant checkpointing run unchanged, because a block's
  weights are plain tensors while its forward (or recompute, or backward) runs; erasers stay ordinary
  parameters, and the DeepSpeed ZeRO-2 engine wraps `ErasureObjective` exactly as before (the
  benchmark's `fsdp+zero2`: same exact equality).
- Not kept: fully_shard on the transformer itself (the root) would make its class `FSDP<Name>`, which the
  family checks (`WanSpec.matches`) read by name; so each unit is its own FSDP root and the few weights set
  directly on the transformer (Wan's `scale_shift_table`, 2 x hidden per expert) stay whole on every rank.
- Loading: `unlearn.sharded_load.sharded_loading` builds the backbone empty (meta), shards it and reads
  each rank's rows from the files, so no rank holds it whole (the worker always loads that way; with
  trajectory x_t the pools are then sampled through the sharded backbone, the ranks in lockstep:
  `unlearn.xt_sources.TrajectorySource`); a backbone loaded whole (on the host, then `device="cuda"` moves
  only its shards to the GPU) is sharded here.

Collectives: every rank must run the same units in the same order. The fused step does (same batch shapes
on every rank); a two-expert denoiser is told to run its idle expert in every forward
(`WanExperts.collective`), no_grad ones included. Anything that runs the backbone on ONE rank (the worker's
proxy eval on rank 0) would wait forever for the others: run it on all ranks or not on a sharded backbone.
Memory (per rank): sum(unit bytes) / N (+ padding to N rows) + the gathered unit + the whole root-level
weights; `resident_bytes` and `gathered_bytes` read it from the live tensors, not from a plan. One more
gathered block with two experts: FSDP frees a unit after its backward through a hook on the unit's inputs
that need a gradient, and the first block's input needs none, so the first block of the expert whose
backward runs first stays gathered until the backward ends (a single transformer ends with that block).
Making that input need a gradient would free it early, but its gradient [rows, tokens, hidden] is bigger
than the block (Wan 2.2 A14B, 81x480x832, 3 rows: 1.0 GB bf16 against a 0.65 GB block): not done.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ShardedBackbone:
    """What `shard_backbone` did, in bytes computed from the shapes (the tests compare them with the live
    storages): `unit_bytes` is each unit as gathered (FSDP pads each weight's first dim to a multiple of N,
    and the all-gather buffer holds the padding), `shard_bytes` what every rank keeps of all units,
    `replicated_bytes` the root-level weights left whole, `whole_bytes` the backbone on one process."""

    units: list[nn.Module]
    unit_bytes: list[int]
    shard_bytes: int
    whole_bytes: int
    world_size: int
    replicated_bytes: int

    @property
    def largest_unit_bytes(self) -> int:
        return max(self.unit_bytes)


def _roots(transformer: nn.Module) -> tuple[nn.Module, ...]:
    """The transformers inside the denoiser: both experts of a Wan 2.2 A14B, else itself."""
    return tuple(getattr(transformer, "experts", (transformer,)))


def backbone_units(transformer: nn.Module) -> list[nn.Module]:
    """One FSDP unit per block (each element of a child ModuleList) and per other direct child with weights."""
    units: list[nn.Module] = []
    for root in _roots(transformer):
        for child in root.children():
            if isinstance(child, nn.ModuleList):
                units.extend(m for m in child if any(True for _ in m.parameters()))
            elif any(True for _ in child.parameters()):
                units.append(child)
    return units


def _nbytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def padded_bytes(params, world: int) -> int:
    """Bytes of these weights as FSDP gathers them: each first dim rounded up to a multiple of `world`."""
    total = 0
    for p in params:
        rows = p.shape[0] if p.dim() else 1
        total += -(-rows // world) * world * (p.numel() // max(rows, 1)) * p.element_size()
    return total


def backbone_mesh(device: str, group=None):
    """The 1-D mesh of `group`'s ranks (default: the world) on `device`'s type, that the units shard over."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh

    world = dist.get_world_size(group)
    ranks = list(range(world)) if group is None else dist.get_process_group_ranks(group)
    return DeviceMesh(torch.device(device).type, ranks)


def shard_units(transformer: nn.Module, mesh, reshard_after_forward: bool = True) -> None:
    """`fully_shard` each unit of `transformer` (`backbone_units`) not sharded yet. Works on meta weights too
    (unlearn.sharded_load shards before it reads the files)."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    # reshard_after_forward must be explicit: left to FSDP (None), a root unit -- each unit is one here --
    # keeps its weights gathered from forward to backward, i.e. the whole backbone at once.
    for u in backbone_units(transformer):
        if not isinstance(u, FSDPModule):
            fully_shard(u, mesh=mesh, reshard_after_forward=reshard_after_forward)


def shard_backbone(spec, eraser_set: nn.Module | None = None, *, group=None, device: str | None = None,
                   reshard_after_forward: bool = True) -> ShardedBackbone:
    """Partition `spec.transformer`'s frozen weights over the ranks of `group` (default: the world), per unit.

    Call after `ErasureObjective(spec, eraser_set, ...)` is built (hooks and processors may be installed
    before or after: sharding does not touch them) and before `deepspeed.initialize`. `eraser_set` is
    checked to be outside the backbone's tree (its parameters must stay whole and trainable). The process
    group must be initialised (gloo on CPU, nccl on GPUs); every rank calls this with the same model.
    `device`: the mesh's device type (default: where the weights are). FSDP moves each rank's shards there,
    so a backbone loaded on the host ("cpu") and sharded with device="cuda" never sits whole on a GPU.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        raise RuntimeError("shard_backbone needs an initialised torch.distributed process group")
    tr = spec.transformer
    if eraser_set is not None:
        inside = {id(p) for p in tr.parameters()}
        if any(id(p) in inside for p in eraser_set.parameters()):
            raise ValueError("the eraser set is registered inside the backbone: it would be sharded with it")
    trainable = [n for n, p in tr.named_parameters() if p.requires_grad]
    if trainable:
        raise ValueError(f"the backbone has trainable weights ({trainable[0]}, ...): only a frozen one is sharded")
    world = dist.get_world_size(group)
    units = backbone_units(tr)
    in_units = {id(p) for u in units for p in u.parameters()}
    replicated = [p for p in tr.parameters() if id(p) not in in_units]
    sizes = [padded_bytes(u.parameters(), world) for u in units]
    whole = _nbytes(tr.parameters())
    # a backbone loaded into its shards (unlearn.sharded_load) has its units sharded already
    shard_units(tr, backbone_mesh(device or next(tr.parameters()).device.type, group), reshard_after_forward)
    if hasattr(tr, "collective"):  # a denoiser of experts: both experts in every forward (see module doc)
        tr.collective = True
    return ShardedBackbone(units, sizes, sum(sizes) // world, whole, world, _nbytes(replicated))


def backbone_group(transformer: nn.Module):
    """The process group a sharded backbone's forwards are collectives over (its units' mesh), or None when
    the backbone is held whole: code that runs the backbone outside the fused step (trajectory sampling,
    unlearn.xt_sources) must then run the same forwards, in the same order, on every rank of it."""
    from torch.distributed.tensor import DTensor

    for p in transformer.parameters():
        if isinstance(p, DTensor):
            return p.device_mesh.get_group()
    return None


def shard_session(session) -> ShardedBackbone:
    """The training worker's hook point (`pipelines/train/worker.py`, after `build_session`, before
    `deepspeed.initialize`): shard a `unlearn.session.TrainingSession`'s backbone over the world, onto its
    device; its erasers stay whole for the engine."""
    return shard_backbone(session.spec, session.eraser_set, device=session.device.type)


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        st = t.untyped_storage()
        if st.nbytes() and st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def resident_bytes(transformer: nn.Module) -> int:
    """Parameter bytes this rank holds for the backbone at rest: its local shards (with FSDP's padding) and
    the root-level weights left whole, summed over the live storages (read from the process)."""
    from torch.distributed.tensor import DTensor

    return _storage_bytes(p.to_local() if isinstance(p, DTensor) else p for p in transformer.parameters())


def gathered_bytes(sharded: ShardedBackbone) -> int:
    """Bytes of unit weights gathered whole right now (0 between units): the plain, non-empty tensors that
    FSDP swapped into the units' modules for their forward/backward."""
    from torch.distributed.tensor import DTensor

    return _storage_bytes(p for u in sharded.units for p in u.parameters() if not isinstance(p, DTensor))


@contextlib.contextmanager
def peak_gathered(sharded: ShardedBackbone, probes: list[nn.Module]):
    """Record the largest `gathered_bytes` seen while each probe module runs (forward, checkpoint recompute
    and backward): yields a one-item list holding the peak. Probes are modules that run inside units (the
    eraser sites), so the reading happens while their unit is gathered."""
    peak = [0]

    def read(*_):
        peak[0] = max(peak[0], gathered_bytes(sharded))

    handles = [m.register_forward_pre_hook(read) for m in probes]
    handles += [m.register_full_backward_pre_hook(read) for m in probes]
    try:
        yield peak
    finally:
        for h in handles:
            h.remove()
