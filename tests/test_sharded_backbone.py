"""The frozen backbone sharded over 2 (and 4) gloo ranks (unlearn.sharding, FSDP2): the step is the single-process one.

The cases of one world size share one spawn of 2 (or 4) real processes (torch.multiprocessing, gloo on 127.0.0.1, no
Ray) that runs them one after another (a spawn per case cost each rank's torch/diffusers/DeepSpeed imports again:
~8 CPU-s a process). For each case every rank builds the tiny model from the same directory, hooks the same erasers, shards the backbone per block and runs one
fused step (reference forward with erasers off + erased forward + backward) on its slice of a global batch,
then all-reduces the eraser gradients (mean), as the DeepSpeed engine does (one case runs the real
DeepSpeed ZeRO-2 engine instead). The parent runs the unsharded
step on each slice in one process and compares: each rank's loss and every averaged eraser gradient within
1e-5. Each rank also reports its resident backbone parameter bytes (its local shards, read from the live
storages) and the most unit bytes it held gathered at once while the step ran.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

WORLD = 2
TOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_model(kind: str, root: Path) -> Path:
    from unlearn.models.tiny import make_tiny_model
    from unlearn.models.tiny_wan import make_tiny_wan

    if kind == "cogvideox":
        return make_tiny_model(root / kind, seed=0)
    return make_tiny_wan(root / kind, seed=0, experts=2 if kind == "wan-a14b" else 1)


def build(kind: str, path: Path, checkpointing: bool):
    """The tiny spec, erasers with random non-zero weights (every gradient non-trivial) and the objective."""
    from tests.family_cases import perturb
    from unlearn.config import LossConfig
    from unlearn.eraser import EraserSet
    from unlearn.models.families import spec_class
    from unlearn.step import ErasureObjective

    spec = spec_class("cogvideox" if kind == "cogvideox" else "wan").from_pretrained(path)
    if checkpointing:
        spec.transformer.enable_gradient_checkpointing()
    torch.manual_seed(0)
    erasers = EraserSet.for_spec(spec, rank=4)
    perturb(erasers, seed=1, scale=0.3)
    loss = LossConfig(eta=3.0, w_preserve=0.5, w_localize=1.0, localize_reduction="mean")
    return spec, erasers, ErasureObjective(spec, erasers, loss)


def global_batch(spec, kind: str, rows: int = WORLD):
    """`rows` concept rows (2 anchors each) + `rows` preserved rows; rank r gets row r of each. Two-expert Wan:
    rank 0's rows are all high-noise and rank 1's all low-noise, so each rank's own batch uses one expert only."""
    from unlearn.masks import selector
    from unlearn.step import StepBatch

    g = torch.Generator().manual_seed(3)
    ls = spec.latent_shape(9, 32, 32)
    r = lambda *s: torch.randn(s, generator=g)  # noqa: E731
    if kind == "cogvideox":
        t_c, t_p = torch.tensor([900, 300, 500, 20]), torch.tensor([700, 100, 999, 450])
    else:  # rows 2, 3 (4 ranks): a high-noise rank and a low-noise rank again
        t_c, t_p = torch.tensor([950.0, 400.0, 880.0, 10.0]), torch.tensor([900.0, 300.0, 990.0, 600.0])
    sel = selector([[1], [1, 2], [2], [1, 3]][:rows], spec.text_len)
    return StepBatch(x_c=r(rows, *ls), t_c=t_c[:rows], emb_c=r(rows, spec.text_len, 32),
                     emb_ref=r(rows, 2, spec.text_len, 32), sel=sel, x_p=r(rows, *ls), t_p=t_p[:rows],
                     emb_p=r(rows, spec.text_len, 32))


def slice_of(batch, rank: int):
    from unlearn.step import StepBatch

    return StepBatch(**{k: v[rank:rank + 1] for k, v in batch.__dict__.items()})


def step(objective, batch) -> tuple[float, dict[str, torch.Tensor]]:
    objective.erasers.zero_grad(set_to_none=True)
    losses = objective(batch)
    losses["loss"].backward()
    return float(losses["loss"].detach()), {n: p.grad.detach().clone() for n, p in objective.erasers.named_parameters()}


def assert_matches_single_process(got: list[dict], ref: list[tuple[float, dict]]) -> None:
    """Each rank's loss equals the single-process step's on its rows, and its (all-reduced) eraser gradients
    the mean of the single-process gradients over the ranks, every one non-zero: within TOL."""
    world = len(ref)
    for r in range(world):
        assert abs(got[r]["loss"] - ref[r][0]) <= TOL * max(1.0, abs(ref[r][0])), (r, got[r]["loss"], ref[r][0])
    names = sorted(ref[0][1])
    assert names and names == sorted(got[0]["grads"])
    for n in names:
        mean = sum(x[1][n] for x in ref) / world
        assert float(mean.abs().max()) > 0, n  # a gradient that is really there
        for r in range(world):
            assert torch.allclose(got[r]["grads"][n], mean, atol=TOL, rtol=TOL), (r, n)


def zero2_engine(objective, world: int):
    """The DeepSpeed engine the worker trains the erasers with (configs/deepspeed/zero2.json), over the
    objective whose backbone is sharded; SGD with lr 0 so the step leaves the weights as they were."""
    import json

    import deepspeed

    ds = json.loads((Path(__file__).resolve().parent.parent / "configs" / "deepspeed" / "zero2.json").read_text())
    ds = {k: v for k, v in ds.items() if not k.startswith("_")}  # as pipelines.config.distributed does
    ds.update({"train_micro_batch_size_per_gpu": 1, "train_batch_size": world, "gradient_accumulation_steps": 1})
    params = list(objective.erasers.parameters())
    engine, *_ = deepspeed.initialize(model=objective, model_parameters=params,
                                      optimizer=torch.optim.SGD(params, lr=0.0), config=ds)
    return engine


def engine_step(engine, batch) -> tuple[float, dict[str, torch.Tensor]]:
    """One engine step; the full (all-ranks mean) eraser gradients as DeepSpeed holds them."""
    from deepspeed.utils import safe_get_full_grad

    loss = engine(batch)["loss"]
    engine.backward(loss)
    grads = {n: safe_get_full_grad(p).clone() for n, p in engine.module.erasers.named_parameters()}
    engine.step()
    return float(loss.detach()), grads


def rank_case(rank: int, world: int, kind: str, path: str, checkpointing: bool, use_engine: bool, out: str) -> None:
    """One case on this rank of the live gloo group: the sharded step, its results to out/rank{rank}.pt."""
    import torch.distributed as dist

    from unlearn.sharding import peak_gathered, resident_bytes, shard_backbone

    spec, erasers, objective = build(kind, Path(path), checkpointing)
    sharded = shard_backbone(spec, erasers)  # the worker's hook point: after the session, before the engine
    at_rest = resident_bytes(spec.transformer)
    batch = slice_of(global_batch(spec, kind, world), rank)
    engine = zero2_engine(objective, world) if use_engine else None
    with peak_gathered(sharded, list(erasers.erasers.values())) as peak:
        loss, grads = engine_step(engine, batch) if use_engine else step(objective, batch)
    if not use_engine:
        for g in grads.values():  # what the engine does with the (whole, replicated) eraser gradients
            dist.all_reduce(g)
            g /= world
    os.makedirs(out, exist_ok=True)
    torch.save({"loss": loss, "grads": grads, "resident": at_rest, "after": resident_bytes(spec.transformer),
                "peak_gathered": peak[0], "whole": sharded.whole_bytes, "largest": sharded.largest_unit_bytes,
                "shard": sharded.shard_bytes, "replicated": sharded.replicated_bytes, "units": len(sharded.units)},
               os.path.join(out, f"rank{rank}.pt"))
    objective.detach()


def rank_main(rank: int, port: int, world: int, cases: list[tuple], root: str) -> None:
    """This rank of a `world`-process gloo group runs every case of that world size in order (the engine case
    last), each into root/<case id>."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # what DeepSpeed reads
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for kind, path, checkpointing, use_engine in cases:
            rank_case(rank, world, kind, path, checkpointing, use_engine,
                      os.path.join(root, case_id(kind, checkpointing, use_engine, world)))
    finally:
        dist.destroy_process_group()


CASES = [("cogvideox", True, False, 2), ("wan", False, False, 2), ("wan-a14b", True, False, 2),
         ("wan-a14b", True, True, 2),  # under the DeepSpeed ZeRO-2 engine that trains the erasers in the worker
         ("wan", True, False, 4)]


def case_id(kind: str, checkpointing: bool, use_engine: bool, world: int) -> str:
    return f"{kind}-ckpt{int(checkpointing)}-engine{int(use_engine)}-w{world}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("sharded-models")


@pytest.fixture(scope="module")
def spawned(models, tmp_path_factory):
    """world -> the folder holding every case of that world size, spawned on first use (one group per world)."""
    import torch.multiprocessing as mp

    done: dict[int, Path] = {}

    def run(world: int) -> Path:
        if world not in done:
            root = tmp_path_factory.mktemp(f"sharded-w{world}")
            cases = sorted((c for c in CASES if c[3] == world), key=lambda c: c[2])  # the engine case last
            todo = [(kind, str(make_model(kind, models)), ckpt, engine) for kind, ckpt, engine, _ in cases]
            mp.start_processes(rank_main, args=(free_port(), world, todo, str(root)), nprocs=world, join=True,
                               start_method="spawn")
            done[world] = root
        return done[world]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("kind,checkpointing,use_engine,world", CASES)
def test_sharded_step_equals_single_process_and_holds_a_shard(kind, checkpointing, use_engine, world, models, spawned):
    path = make_model(kind, models)
    out = spawned(world) / case_id(kind, checkpointing, use_engine, world)
    got = [torch.load(out / f"rank{r}.pt") for r in range(world)]

    # the single-process step on each rank's slice (unsharded, no checkpointing), gradients averaged
    spec, _, objective = build(kind, path, checkpointing=False)
    batch = global_batch(spec, kind, world)
    ref = [step(objective, slice_of(batch, r)) for r in range(world)]
    objective.detach()
    assert_matches_single_process(got, ref)

    for r in range(world):
        g = {k: v for k, v in got[r].items() if k not in ("grads", "loss")}
        # at rest: exactly this rank's padded shards + the root-level weights kept whole, read from the storages;
        # the shards are 1/world of the backbone up to FSDP's padding: 4.1% at 4 ranks on these tiny widths (each
        # block's scale_shift_table [1, 6, 24] is padded to 4 rows); 0.1% at Wan 2.2 A14B's (the meta test below)
        assert g["resident"] == g["shard"] + g["replicated"], g
        assert g["whole"] / world <= g["shard"] + g["replicated"] <= 1.05 * g["whole"] / world, g
        assert g["after"] == g["resident"]  # every gathered unit was freed after the step
        # while the step ran: one unit gathered at a time per transformer, never more than the largest (as
        # gathered, padded); two experts: one more (see unlearn.sharding: the first block of the expert whose
        # backward ran first is freed only when the whole backward ends)
        experts = 2 if kind == "wan-a14b" else 1
        assert 0 < g["peak_gathered"] <= experts * g["largest"], g


# < 0.5 s in a run with tests/test_memory_plan.py (24 s alone on the loaded box: the plan's imports)
def test_plan_counts_the_sharded_backbone():
    """`t2vu plan`'s terms with PlanInputs.shard_backbone: the weights / world + the gathered blocks, on the
    shipped Wan 2.2 A14B config at 81x480x832 over 4 GPUs (the issue's case: 2 experts, 40 blocks each)."""
    from dataclasses import replace

    from pipelines.plan.memory_check import load_plan_config, make_request, plan_inputs
    from pipelines.plan.memory_plan import plan_memory

    root = Path(__file__).resolve().parent.parent
    m, p = load_plan_config(root / "configs" / "wan" / "wan2.2-t2v-a14b-nudity.yaml")
    x, _ = plan_inputs(make_request(m, p, mode="distributed", world_size=4, gpu_memory_gb=80))
    whole, sharded = plan_memory(x), plan_memory(replace(x, shard_backbone=True))
    terms = {t.name: t.bytes for t in sharded.terms}
    weights = 2 * x.params_transformer * x.weight_bytes
    assert terms["backbone weights"] == pytest.approx(weights / 4)
    block = x.params_transformer / x.layers * x.weight_bytes
    assert terms["gathered backbone blocks"] == pytest.approx(2 * block + block / 4)
    saved = whole.terms[0].bytes - terms["backbone weights"] - terms["gathered backbone blocks"]
    assert whole.peak_bytes - sharded.peak_bytes == pytest.approx(saved)
    one = replace(x, world_size=1)  # one process: nothing to shard over
    assert plan_memory(replace(one, shard_backbone=True)).peak_bytes == plan_memory(one).peak_bytes


def test_plan_counts_trajectory_sampling_through_the_shards():
    """With trajectory x_t the pools are sampled through the sharded backbone (unlearn.xt_sources), so the plan's
    sampling phase holds this rank's share and one gathered block (one expert per sampler step, no backward), not
    the whole backbone: A14B at 81x480x832 on 4 GPUs, pool 8, 20 steps."""
    from dataclasses import replace

    from pipelines.plan.memory_check import load_plan_config, make_request, plan_inputs
    from pipelines.plan.memory_plan import SAMPLING, plan_memory

    root = Path(__file__).resolve().parent.parent
    m, p = load_plan_config(root / "configs" / "wan" / "wan2.2-t2v-a14b-nudity.yaml", ["train.xt_source=trajectory"])
    x, _ = plan_inputs(make_request(m, p, mode="distributed", world_size=4, gpu_memory_gb=80))
    assert x.trajectory is not None and x.experts == 2
    whole, sharded = plan_memory(x), plan_memory(replace(x, shard_backbone=True))
    weights = 2 * x.params_transformer * x.weight_bytes
    block = x.params_transformer / x.layers * x.weight_bytes
    saved = weights - (weights / 4 + block + block / 4)  # the whole backbone -> its share + one block + gather input
    assert whole.phases[SAMPLING] - sharded.phases[SAMPLING] == pytest.approx(saved)


# 1.1 s in a run with the other family tests (70 s alone on the loaded box: the diffusers import)
def test_real_size_a14b_shards_on_meta_over_four_ranks():
    """Wan 2.2 T2V-A14B at its real shapes (2 experts x 40 blocks, on meta: nothing allocated) sharded for rank 0
    of 4 (torch's `fake` process group: the real FSDP2 layout code, no communication): each rank keeps 1/4 of
    the 53 GB of weights, the largest unit is one block, and the plan's per-block estimate bounds it."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from diffusers import WanTransformer3DModel
    from torch.distributed.tensor import DTensor
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from unlearn.models.architectures import PRESET_PARAMETERS, PRESETS, init_kwargs
    from unlearn.models.wan_experts import WanExperts
    from unlearn.sharding import backbone_group, shard_backbone
    from unlearn.xt_sources import lockstep_rounds

    cfg = init_kwargs(WanTransformer3DModel, PRESETS["wan2.2-t2v-a14b"]["transformer"])
    with torch.device("meta"):
        experts = [WanTransformer3DModel(**cfg) for _ in range(2)]
    for t in experts:
        torch.nn.Module.to(t, torch.bfloat16).requires_grad_(False)
    tr = WanExperts(*experts, 875.0)
    assert backbone_group(tr) is None  # held whole: trajectory sampling needs no lockstep (unlearn.xt_sources)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=4)
    try:
        sharded = shard_backbone(SimpleNamespace(transformer=tr), device="cpu")
        # sharded: trajectory sampling agrees its count of trajectories over the units' group (FSDP2 refuses a
        # forward on meta weights, so the sampling itself is tests/test_sharded_load.py's, on CPU)
        assert lockstep_rounds(3, backbone_group(tr)) == 3
    finally:
        dist.destroy_process_group()
    params = PRESET_PARAMETERS["wan2.2-t2v-a14b"][0]
    assert sharded.whole_bytes == 2 * params * 2 and tr.collective
    assert len(sharded.units) == 2 * (cfg["num_layers"] + 3)  # per expert: blocks, patch/condition embedders, head
    local = sum(p.to_local().numel() * p.element_size() for p in tr.parameters() if isinstance(p, DTensor))
    assert local == sharded.shard_bytes  # the layout FSDP made is the one the shapes predict
    assert sharded.whole_bytes / 4 <= sharded.shard_bytes + sharded.replicated_bytes <= 1.001 * sharded.whole_bytes / 4
    block = params / cfg["num_layers"] * 2  # the plan's gathered-block estimate (pipelines/plan/memory_plan.py)
    assert 0.85 * block <= sharded.largest_unit_bytes <= block
