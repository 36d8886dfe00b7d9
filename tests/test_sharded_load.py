"""The frozen backbone loaded straight into its shards (unlearn.sharded_load): the same weights as a whole load,
and each rank's peak resident memory while loading is its 1/N share (+ at most the largest unit), read from
the process (its peak RSS, VmHWM, reset before the load), not from the plan (issue 23).

One spawn of 2 gloo ranks (torch.multiprocessing, no Ray) does every measurement; the parent loads the
models whole and compares.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from tests.test_sharded_backbone import free_port, global_batch, make_model, slice_of, step

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


def make_wide(root: Path) -> Path:
    """A Wan transformer wide enough (~110 MB fp32) for RSS to resolve its halves: 6 blocks of ~17 MB."""
    from diffusers import WanTransformer3DModel

    sub = root / "wide" / "transformer"
    if not (sub / "config.json").is_file():
        torch.manual_seed(0)
        WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=64, in_channels=16,
                              out_channels=16, text_dim=64, freq_dim=64, ffn_dim=2048, num_layers=6,
                              cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64,
                              ).save_pretrained(str(sub), safe_serialization=True)
    return sub


def local_state(transformer) -> dict:
    from torch.distributed.tensor import DTensor

    return {n: (t.to_local() if isinstance(t, DTensor) else t).detach().clone()
            for n, t in [*transformer.named_parameters(), *transformer.named_buffers()]}


def rank_main(rank: int, root: str, port: int, out: str) -> None:
    import torch.distributed as dist

    from tests.test_sharded_backbone import build
    from unlearn.base_fingerprint import of_module
    from unlearn.models.families import spec_class
    from unlearn.sharded_load import load_sharded_part, sharded_loading
    from unlearn.sharding import backbone_units, resident_bytes

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
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
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("sharded-load")
    make_wide(root)
    make_model("wan-a14b", root)
    make_model("cogvideox", root)
    out = root / "out"
    out.mkdir()
    mp.start_processes(rank_main, args=(str(root), free_port(), str(out)), nprocs=WORLD, join=True,
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
