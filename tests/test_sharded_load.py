"""The frozen backbone loaded straight into its shards (unlearn.sharded_load): the same weights as a whole load,
and each rank's peak resident memory while loading is its 1/N share (+ at most the largest unit), read from
the process (its peak RSS, VmHWM, reset before the load), not from the plan (issue 23).

Trajectory x_t with the backbone in its shards (the worker's path under distributed.shard_backbone: the pools are
sampled through the shards, the ranks in lockstep, unlearn.xt_sources): one unit gathered at a time, and the
rank's peak RSS while sampling stays under the whole backbone; and each rank's tiny-Wan TrainingSession built
inside `sharded_loading`, as the worker builds it, samples the pools and takes the step of the same session
built whole (pools, loss, eraser gradients).

One spawn of 2 gloo ranks (torch.multiprocessing, no Ray) does every measurement; the parent loads the
models whole and compares.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from tests.test_sharded_backbone import (TOL, assert_matches_single_process, free_port, global_batch, make_model,
                                         slice_of, step)

WORLD = 2


def kb(field: str) -> int:
    return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def reset_peak_rss() -> int:
    """Hand freed heap pages back to the OS (else the next load reuses them unseen), reset this process's peak
    RSS (VmHWM) to its current RSS; return that, in bytes."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return 1024 * kb("VmRSS")


# two Wan transformers of ~100 MB fp32, big enough for RSS to resolve their halves: 6 blocks of ~17 MB (loading),
# and 24 narrow blocks of ~4 MB (sampling: a gathered unit is small next to the half a rank keeps)
WIDE = {"attention_head_dim": 64, "ffn_dim": 2048, "num_layers": 6}
DEEP = {"attention_head_dim": 32, "ffn_dim": 1024, "num_layers": 24}


def make_wan(root: Path, name: str, dims: dict) -> Path:
    from diffusers import WanTransformer3DModel

    sub = root / name / "transformer"
    if not (sub / "config.json").is_file():
        torch.manual_seed(0)
        WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=8, in_channels=16, out_channels=16, text_dim=64,
                              freq_dim=64, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
                              **dims).save_pretrained(str(sub), safe_serialization=True)
    return sub


def local_state(transformer) -> dict:
    from torch.distributed.tensor import DTensor

    return {n: (t.to_local() if isinstance(t, DTensor) else t).detach().clone()
            for n, t in [*transformer.named_parameters(), *transformer.named_buffers()]}


def sample_through_shards(tr, root: Path, rank: int):
    """A transformer's trajectories (2 sampler steps, 1 per prompt): 2 prompts on rank 0, 1 on rank 1,
    so rank 1 also runs one throwaway trajectory to keep the all-gathers in step."""
    from diffusers import UniPCMultistepScheduler

    from unlearn.models.wan import WanSpec
    from unlearn.xt_sources import TrajectorySource

    spec = WanSpec(tr, UniPCMultistepScheduler.from_pretrained(str(root / "wan-a14b"), subfolder="scheduler"),
                   text_len=16)
    g = torch.Generator().manual_seed(rank)
    prompts = [["a", "b"], ["c"]][rank]
    emb = {p: torch.randn(16, tr.config.text_dim, generator=g) for p in ["", *prompts]}
    return TrajectorySource(spec, spec.latent_shape(9, 32, 32), emb, prompts, num_steps=2, guidance=3.0, pool_size=1)


def measure_sampling(tr, root: Path, rank: int) -> dict:
    """Peak RSS over a sampling through the shards, after one unmeasured (first forwards: imports, kernels, the
    allocator's arenas), and the most unit bytes held gathered at once, read from the live storages."""
    from types import SimpleNamespace

    from unlearn.sharding import peak_gathered, resident_bytes, shard_backbone

    sharded = shard_backbone(SimpleNamespace(transformer=tr))  # sharded at load: only records the units
    resident = resident_bytes(tr)
    sample_through_shards(tr, root, rank)
    peaks, most = [], 0
    # the smaller peak of two measured samplings: what the allocator's arenas and gloo's buffers keep from one busy
    # moment on a loaded box only adds (seen once in a full suite: 67.6 MB, against 16-34 MB in every other run);
    # what sampling itself holds is in both
    for _ in range(2):
        before = reset_peak_rss()
        with peak_gathered(sharded, [b.attn1 for b in tr.blocks]) as gathered:
            src = sample_through_shards(tr, root, rank)
        peaks.append(1024 * kb("VmHWM") - before)
        most = max(most, gathered[0])
    return {"peak": min(peaks), "gathered": most, "fill": src.lockstep_fill,
            "resident": resident, "after": resident_bytes(tr), "whole": sharded.whole_bytes,
            "largest": sharded.largest_unit_bytes}


def trajectory_cfg(model_dir: Path, cache: Path):
    """The tiny Wan with trajectory x_t, one rank's share of a global 2 + 2 batch. The 3 concept and 4 preserve
    prompts (with the empty one) split 4 / 3 over the ranks: rank 1 runs a throwaway trajectory while rank 0
    samples its last one."""
    from unlearn.config import EraserTrainingConfig

    return EraserTrainingConfig.model_validate({
        "model": {"path": str(model_dir), "family": "wan", "num_frames": 9, "height": 32, "width": 32},
        "eraser": {"rank": 4},
        "concept": {"target": "naked", "prompts": ["a naked body", "a naked person on a beach", "a naked woman"],
                    "reference": "anchors", "anchors": ["clothed"], "preserve": ["a person", "a face", "a dog"]},
        "loss": {"eta": 3.0, "w_localize": 1.0, "mask_threshold": 0.3},
        "train": {"steps": 1, "batch_size": 1, "preserve_batch_size": 1, "cache_dir": str(cache),
                  "xt_source": "trajectory", "trajectory": {"num_inference_steps": 3, "pool_size": 2}},
    })


def session_step(session) -> tuple[float, dict]:
    from tests.family_cases import perturb

    perturb(session.eraser_set, seed=1, scale=0.3)  # every eraser gradient non-trivial
    return step(session.objective, session.batch(0))


def trajectory_session(rank: int, wan_dir: Path, cache: Path) -> dict:
    """The worker's build_session + shard_session with trajectory x_t, and one step (gradients all-reduced, mean)."""
    import torch.distributed as dist

    from unlearn.session import TrainingSession
    from unlearn.sharded_load import sharded_loading
    from unlearn.sharding import resident_bytes, shard_session

    with sharded_loading("cpu"):
        session = TrainingSession(trajectory_cfg(wan_dir, cache), device="cpu", rank=rank, world_size=WORLD)
    after_sampling = resident_bytes(session.spec.transformer)
    sharded = shard_session(session)  # finds the units sharded already: only records them
    loss, grads = session_step(session)
    for g in grads.values():  # what DeepSpeed does with the whole, replicated eraser gradients
        dist.all_reduce(g)
        g /= WORLD
    src = session.source
    session.objective.detach()
    return {"loss": loss, "grads": grads, "pool": src.pool, "sampled": src.sampled, "fill": src.lockstep_fill,
            "resident": after_sampling, "shard": sharded.shard_bytes, "replicated": sharded.replicated_bytes,
            "whole": sharded.whole_bytes, "after": resident_bytes(session.spec.transformer)}


def rank_main(rank: int, root: str, wan_dir: str, port: int, out: str) -> None:
    import torch.distributed as dist

    from tests.test_sharded_backbone import build
    from unlearn.base_fingerprint import of_module
    from unlearn.models.families import spec_class
    from unlearn.sharded_load import load_sharded_part, sharded_loading
    from unlearn.sharding import backbone_units, resident_bytes

    torch.set_num_threads(1)
    # a rank left out of a lockstep (trajectory sampling) would keep the other waiting: fail in 5 minutes, not 30
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=300))
    try:
        res = {}
        # 1. the two-expert Wan in bf16 (keep-in-fp32 weights, transformer_2/): local shards, buffers, fingerprint
        with sharded_loading("cpu"):
            spec = spec_class("wan").from_pretrained(Path(root) / "wan-a14b", "bfloat16")
        res["a14b"] = {f"{i}/{k}": v for i, e in enumerate(spec.transformer.experts) for k, v in local_state(e).items()}
        res["a14b_fingerprint"] = of_module(spec.transformer)
        # 2. memory, once every import and FSDP path has run (step 1): the wide transformer into its shards, then whole
        sub = Path(root) / "wide" / "transformer"
        before = reset_peak_rss()
        tr = load_sharded_part(sub, torch.float32, "cpu")
        res["peak_sharded"] = 1024 * kb("VmHWM") - before
        res["resident"] = resident_bytes(tr)
        res["largest_unit"] = max(sum(p.numel() * p.element_size() for p in u.parameters()) for u in backbone_units(tr))
        del tr
        # 2b. trajectory x_t sampled through the deep transformer's shards, the ranks in lockstep (unlearn.xt_sources)
        res["sampling"] = measure_sampling(load_sharded_part(Path(root) / "deep" / "transformer", torch.float32, "cpu"),
                                           Path(root), rank)
        from diffusers import WanTransformer3DModel

        before = reset_peak_rss()
        whole = WanTransformer3DModel.from_pretrained(str(sub))
        sum(float(p.sum()) for p in whole.parameters())  # read every weight: from_pretrained maps the file lazily
        res["peak_whole"] = 1024 * kb("VmHWM") - before
        res["whole"] = sum(p.numel() * p.element_size() for p in whole.parameters())
        del whole
        # 3. CogVideoX loaded into shards runs the fused step (FSDP's lazy init after to_empty)
        with sharded_loading("cpu"):
            spec, erasers, objective = build("cogvideox", Path(root) / "cogvideox", checkpointing=True)
        res["cog_loss"] = step(objective, slice_of(global_batch(spec, "cogvideox", WORLD), rank))[0]
        res["cog"] = local_state(spec.transformer)
        # 4. trajectory x_t: the tiny Wan's session built as the worker builds it, its pools sampled through the shards
        res["traj"] = trajectory_session(rank, Path(wan_dir), Path(root) / "cache-sharded")
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, tiny_wan_dir):
    import torch.multiprocessing as mp

    from unlearn.session import prepare_embeddings

    root = tmp_path_factory.mktemp("sharded-load")
    make_wan(root, "wide", WIDE)
    make_wan(root, "deep", DEEP)
    make_model("wan-a14b", root)
    make_model("cogvideox", root)
    prepare_embeddings(trajectory_cfg(tiny_wan_dir, root / "cache-sharded"))  # the driver's job: no encoder in a rank
    out = root / "out"
    out.mkdir()
    mp.start_processes(rank_main, args=(str(root), str(tiny_wan_dir), free_port(), str(out)), nprocs=WORLD, join=True,
                       start_method="spawn")
    return root, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _rows(t: torch.Tensor, rank: int) -> torch.Tensor:
    """Rank `rank`'s rows of a whole weight, as FSDP2 shards dim 0 (torch.chunk)."""
    if t.dim() == 0:
        return t
    chunks = torch.chunk(t, WORLD, dim=0)
    return chunks[rank] if rank < len(chunks) else t[:0]


@pytest.mark.slow
def test_each_rank_reads_exactly_its_rows_and_runs_the_step(loaded):
    from unlearn.base_fingerprint import of_module
    from unlearn.models.families import spec_class
    from tests.test_sharded_backbone import build

    root, got = loaded
    whole = spec_class("wan").from_pretrained(root / "wan-a14b", "bfloat16")
    ref = {f"{i}/{k}": v for i, e in enumerate(whole.transformer.experts)
           for k, v in [*e.named_parameters(), *e.named_buffers()]}
    assert {v.dtype for v in ref.values()} >= {torch.bfloat16, torch.float32}  # keep-in-fp32 weights exercised
    for r in range(WORLD):
        assert got[r]["a14b"].keys() == ref.keys()
        split = 0
        for k, v in ref.items():
            mine = got[r]["a14b"][k]
            assert mine.dtype == v.dtype, (r, k, mine.dtype, v.dtype)
            split += mine.shape != v.shape
            assert torch.equal(mine, v if mine.shape == v.shape else _rows(v, r)), (r, k)  # whole, or its rows
        assert split > len(ref) / 2, split  # most weights are held as rows
        assert got[r]["a14b_fingerprint"] == of_module(whole.transformer)  # same base fingerprint as a whole load

    spec, _, objective = build("cogvideox", root / "cogvideox", checkpointing=False)
    batch = global_batch(spec, "cogvideox", WORLD)
    for r in range(WORLD):
        loss = step(objective, slice_of(batch, r))[0]
        assert abs(got[r]["cog_loss"] - loss) <= 1e-5 * max(1.0, abs(loss)), (r, got[r]["cog_loss"], loss)
    objective.detach()


@pytest.mark.slow
def test_each_rank_peaks_at_its_share_while_loading(loaded):
    """Peak RSS while loading the ~110 MB transformer into shards: at most whole/2 + the largest unit (+4 MB for
    allocator slack); the same process loading it whole (and reading every weight once) peaks at the whole:
    the reading resolves the difference."""
    _, got = loaded
    for r in range(WORLD):
        g = {k: got[r][k] for k in ("peak_sharded", "peak_whole", "whole", "resident", "largest_unit")}
        assert g["whole"] > 100e6, g
        assert g["whole"] / WORLD <= g["resident"] <= 1.02 * g["whole"] / WORLD, g  # its rows (+ FSDP padding)
        assert g["peak_sharded"] <= g["whole"] / WORLD + g["largest_unit"] + 4 * 2**20, g
        assert g["peak_whole"] >= 0.95 * g["whole"], g


@pytest.mark.slow
def test_trajectory_pools_sampled_through_the_shards_train_the_unsharded_step(loaded, tiny_wan_dir):
    """Each rank's session (sharded load, trajectory x_t) against the same session built whole in one process (its
    own caches: it samples too): the pools, the loss and every averaged eraser gradient within 1e-5; after
    sampling each rank holds exactly its shards + the root weights, 1/2 of the backbone (+ FSDP padding)."""
    from unlearn.session import TrainingSession

    root, got = loaded
    got = [g["traj"] for g in got]
    # 4 prompts on rank 0 and 3 on rank 1, none cached: rank 1 ran a one-row trajectory to keep in step
    assert [g["sampled"] for g in got] == [4, 3] and [g["fill"] for g in got] == [0, 1]
    ref = []
    for r in range(WORLD):
        whole = TrainingSession(trajectory_cfg(tiny_wan_dir, root / "cache-whole"), device="cpu", rank=r,
                                world_size=WORLD)
        assert whole.source.sampled == got[r]["sampled"] and whole.source.pool.keys() == got[r]["pool"].keys()
        for p, (states, times) in whole.source.pool.items():
            torch.testing.assert_close(got[r]["pool"][p][0], states, atol=TOL, rtol=TOL, msg=lambda m: f"{p}: {m}")
            assert torch.equal(got[r]["pool"][p][1], times), p
        ref.append(session_step(whole))
        whole.objective.detach()
    assert_matches_single_process(got, ref)
    for r in range(WORLD):
        g = {k: v for k, v in got[r].items() if k not in ("grads", "pool")}
        assert g["resident"] == g["shard"] + g["replicated"] == g["after"], g  # no unit left gathered
        assert g["whole"] / WORLD <= g["resident"] <= 1.05 * g["whole"] / WORLD, g


@pytest.mark.slow
def test_sampling_trajectories_through_the_shards_keeps_each_rank_at_its_share(loaded):
    """Trajectory x_t with the backbone in its shards (the worker's path under distributed.shard_backbone), the
    deep transformer (24 units of ~4 MB, ~100 MB): one unit at most is gathered at a time (live storages) and
    every unit is sharded again after; the process never holds the backbone whole: its shards + the peak RSS
    that sampling adds stay under the whole. On gloo that addition is several units, not one (measured 16.3-20.5
    MB alone, 33.6 MB in this spawn, at 4.2 MB a unit): per unit in transit FSDP's all-gather input (1/N) and
    output, gloo's flat receive buffer, the copy-out to the unit's weights, and what the allocator's arenas keep."""
    _, got = loaded
    assert [got[r]["sampling"]["fill"] for r in range(WORLD)] == [0, 1]  # rank 1 kept in step with a throwaway one
    for r in range(WORLD):
        g = got[r]["sampling"]
        assert g["after"] == g["resident"] and g["resident"] <= 1.02 * g["whole"] / WORLD, g
        assert 0 < g["gathered"] <= g["largest"], g
        assert g["resident"] + g["peak"] < g["whole"], g


def test_byte_range_reads_give_the_rows_a_whole_load_gives(tmp_path):
    """The reader behind every rank's share (fast, no ranks): rows [a, b) of each dtype a diffusers checkpoint
    holds equal the slice of the whole tensor, across the two files of a sharded index; a file cut short is
    an error naming the tensor, and .bin weights are refused in one line naming the fix."""
    import json as _json

    from safetensors.torch import save_file

    from unlearn.errors import ConfigError
    from unlearn.sharded_load import _Files

    g = torch.Generator().manual_seed(0)
    first = {"a.weight": torch.randn(7, 5, generator=g), "b.weight": torch.randn(6, 3, generator=g).bfloat16()}
    second = {"c.weight": torch.randn(4, 2, 3, generator=g).half(), "d.ids": torch.arange(9, dtype=torch.int64),
              "e.scale": torch.tensor(2.5)}
    save_file(first, str(tmp_path / "part-1.safetensors"))
    save_file(second, str(tmp_path / "part-2.safetensors"))
    weight_map = {**{k: "part-1.safetensors" for k in first}, **{k: "part-2.safetensors" for k in second}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(_json.dumps({"weight_map": weight_map}))

    files = _Files(tmp_path)
    for name, whole in {**first, **second}.items():
        assert torch.equal(files.read(name), whole), name
        if whole.dim():
            a, b = 1, whole.shape[0] - 1
            part = files.read(name, a, b)
            assert part.dtype == whole.dtype and torch.equal(part, whole[a:b]), name
    assert files.read("a.weight", 3, 3).shape == (0, 5)

    cut = tmp_path / "part-2.safetensors"
    last = max(second, key=lambda k: files.entry(k)[2]["data_offsets"][1])  # the tensor stored last
    cut.write_bytes(cut.read_bytes()[:-2])  # loses its last bytes
    with pytest.raises(OSError, match=f"tensor {last} is cut short"):
        _Files(tmp_path).read(last)

    binary = tmp_path / "bin"
    binary.mkdir()
    torch.save(first, binary / "diffusion_pytorch_model.bin")
    with pytest.raises(ConfigError, match="safe_serialization=True"):
        _Files(binary)
