"""Wan 2.2 A14B's two experts behind the Wan spec: routing as WanPipeline switches, per-row attention
capture and eraser records from the expert that served the row, one eraser set per expert trained only
by its own timesteps, the eraser file loading into a two-expert WanPipeline, and the CLI path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.family_cases import perturb
from unlearn.attention import AttentionCapture
from unlearn.eraser import EraserMismatchError, EraserSet, attach, load_eraser, save_eraser
from unlearn.models.wan import WanSpec
from unlearn.models.wan_experts import WanExperts

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
GEOMETRY = (9, 32, 32)


@pytest.fixture(scope="module")
def a14b_dir(tiny_a14b_dir):
    return tiny_a14b_dir  # tests/conftest.py: built once per session


@pytest.fixture()
def spec(a14b_dir):
    return WanSpec.from_pretrained(a14b_dir)


def mixed_inputs(spec, seed=0):
    """Three rows: high noise, low noise, high noise (the switch at boundary_ratio * 1000 = 875)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((3, *spec.latent_shape(*GEOMETRY)), generator=g)
    t = torch.tensor([950.0, 400.0, 875.0])
    e = torch.randn((3, spec.text_len, 32), generator=g)
    return x, t, e


def test_two_expert_directory_loads_as_one_routed_denoiser(spec, a14b_dir):
    index = json.loads((a14b_dir / "model_index.json").read_text())
    assert index["boundary_ratio"] == 0.875 and index["transformer_2"][1] == "WanTransformer3DModel"
    tr = spec.transformer
    assert isinstance(tr, WanExperts) and tr.boundary == 875.0
    assert len(spec.blocks()) == 2 * tr.high.config.num_layers  # eraser sites: high expert's, then low's
    assert WanSpec.eraser_shape_of(a14b_dir) == (len(spec.blocks()), spec.hidden_size())
    assert not torch.equal(next(tr.high.parameters()), next(tr.low.parameters()))


def test_rows_go_to_the_expert_of_their_timestep(spec):
    """t >= boundary -> transformer (high noise), else transformer_2: WanPipeline's rule, per row."""
    x, t, e = mixed_inputs(spec)
    out = spec.velocity(x, t, e)
    tr = spec.transformer
    with torch.no_grad():
        hi = tr.high(hidden_states=x[[0, 2]], timestep=t[[0, 2]], encoder_hidden_states=e[[0, 2]], return_dict=False)[0]
        lo = tr.low(hidden_states=x[[1]], timestep=t[[1]], encoder_hidden_states=e[[1]], return_dict=False)[0]
    assert torch.allclose(out[[0, 2]], hi, atol=1e-6) and torch.allclose(out[[1]], lo, atol=1e-6)


def test_capture_keeps_each_row_from_its_own_expert(spec):
    x, t, e = mixed_inputs(spec)
    tr = spec.transformer
    cap = AttentionCapture(spec.capture_modules(tr), spec.capture_processor, chunk=7)
    with torch.no_grad(), cap.capturing(2):  # rows 0 (high) and 1 (low)
        spec.velocity(x, t, e)
    got = cap.probs()
    cap.remove()
    layers = tr.high.config.num_layers
    assert len(got) == 2 * layers and all(p.shape[0] == 2 for p in got)
    for expert, row, offset in ((tr.high, 0, 0), (tr.low, 1, layers)):
        ref_cap = AttentionCapture([b.attn2 for b in expert.blocks], spec.capture_processor, chunk=7)
        with torch.no_grad(), ref_cap.capturing(1):
            expert(hidden_states=x[[row]], timestep=t[[row]], encoder_hidden_states=e[[row]], return_dict=False)
        for i, ref in enumerate(ref_cap.probs()):
            assert torch.allclose(got[offset + i][row], ref[0], atol=1e-6)
            assert not got[offset + i][1 - row].any(), "the other expert's layer holds nothing for this row"
        ref_cap.remove()


def test_records_merge_into_one_per_block_in_row_order(spec):
    tr = spec.transformer
    raw = {}  # the modules' own outputs: these hooks run before the erasers' (registered first)
    mods = spec.eraser_modules(tr)
    grabs = [m.register_forward_hook(lambda mod, a, o, i=i: raw.__setitem__(i, o.detach())) for i, m in enumerate(mods)]
    es = EraserSet.for_spec(spec, rank=4)
    perturb(es)
    handle = attach(tr, es)
    x, t, e = mixed_inputs(spec)
    with handle.recording(2, "sum") as rec:
        spec.velocity(x, t, e)
    for g in grabs:
        g.remove()
    layers = tr.high.config.num_layers
    assert sorted(rec) == list(range(layers))
    for i in range(layers):
        # high expert's sub-batch is rows [0, 2] (its first row is caller row 0); the low expert's is row [1]
        e_hi = es.erasers[str(i)](raw[i][:1]).pow(2).sum(-1)
        e_lo = es.erasers[str(layers + i)](raw[layers + i][:1]).pow(2).sum(-1)
        assert rec[i].shape == (2, e_hi.shape[1]) and rec[i].requires_grad
        assert torch.allclose(rec[i][0], e_hi[0], rtol=1e-5) and torch.allclose(rec[i][1], e_lo[0], rtol=1e-5)
    handle.remove()


def test_each_expert_eraser_learns_only_from_its_timesteps(spec):
    """One eraser set per expert: a loss on high-noise rows only gives the low expert's erasers a zero gradient."""
    es = EraserSet.for_spec(spec, rank=4)
    perturb(es)
    handle = attach(spec.transformer, es)
    x, t, e = mixed_inputs(spec)
    spec.velocity(x[[0, 2]], t[[0, 2]], e[[0, 2]]).pow(2).mean().backward()
    layers = spec.transformer.high.config.num_layers
    for i in range(2 * layers):
        g = es.erasers[str(i)].up.weight.grad
        assert g is not None and (g.abs().sum() > 0 if i < layers else not g.any()), i  # low: zeros, not None
    handle.remove()


@pytest.mark.slow
def test_cli_trains_both_experts_and_the_eraser_loads_into_wan_pipeline(a14b_dir, tmp_path):
    from diffusers import WanPipeline

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipelines.cli.entry", "train", "--config", str(ROOT / "configs" / "wan" / "tiny.yaml"),
           "--output", str(out), "--set", f"model.path={a14b_dir}", "--set", "train.steps=6",
           "--set", "train.xt_source=trajectory", "--set", f"train.cache_dir={tmp_path / 'cache'}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((out / "eraser" / "eraser_config.json").read_text())
    assert meta["model_family"] == "wan" and meta["num_blocks"] == 4
    pipe = WanPipeline.from_pretrained(str(a14b_dir))
    handle = load_eraser(pipe, out / "eraser")  # both experts: transformer and transformer_2
    assert all(m._forward_hooks for m in [*(b.attn2 for b in pipe.transformer.blocks),
                                          *(b.attn2 for b in pipe.transformer_2.blocks)])
    changed = [i for i, er in handle.eraser_set.erasers.items() if er.up.weight.abs().sum() > 0]
    assert sorted(changed, key=int) == ["0", "1", "2", "3"], "both experts' erasers were trained"

    def video():
        g = torch.Generator().manual_seed(0)
        return pipe("a red square", num_frames=5, height=32, width=32, num_inference_steps=4, guidance_scale=3.0,
                    generator=g, output_type="np", max_sequence_length=16).frames[0]

    erased = video()
    with handle.disabled():
        base = video()
    assert base.shape == erased.shape == (5, 32, 32, 3) and abs(base - erased).max() > 0
    handle.remove()
    # an eraser of a single-transformer Wan has half the blocks: refused, naming both shapes
    single = EraserSet.for_spec(WanSpec(pipe.transformer, pipe.scheduler, text_len=16), rank=4)
    save_eraser(single, tmp_path / "single")
    with pytest.raises(EraserMismatchError, match="2 blocks .* 4 blocks"):
        load_eraser(pipe, tmp_path / "single")


def test_a_step_using_one_expert_still_gives_every_eraser_a_gradient(spec):
    """Distributed training (ZeRO/DDP) needs the same parameters to get gradients on every rank: a
    grad-enabled forward whose rows all sit in one expert runs the idle expert on a zero-weight row."""
    es = EraserSet.for_spec(spec, rank=4)
    perturb(es)
    handle = attach(spec.transformer, es)
    x, t, e = mixed_inputs(spec)
    with handle.recording(2, "sum") as rec:
        out = spec.velocity(x[[0, 2]], t[[0, 2]], e[[0, 2]])  # high noise only
    with torch.no_grad():
        assert torch.equal(out, spec.velocity(x[[0, 2]], t[[0, 2]], e[[0, 2]])), "the idle expert adds exactly 0"
    layers = spec.transformer.high.config.num_layers
    ref = {i: es.erasers[str(i)] for i in range(layers)}
    assert sorted(rec) == list(range(layers)) and all(rec[i].shape[0] == 2 for i in ref)
    (out.pow(2).mean() + sum(r.sum() for r in rec.values())).backward()
    grads = [es.erasers[str(i)].up.weight.grad for i in range(2 * layers)]
    assert all(g is not None for g in grads)
    assert all(g.abs().sum() > 0 for g in grads[:layers]) and all(not g.any() for g in grads[layers:])
    handle.remove()


@pytest.mark.slow
def test_ray_train_deepspeed_zero2_trains_both_experts(a14b_dir, tmp_path, ray_env):
    """2 Ray Train workers + DeepSpeed ZeRO-2 (gloo): ranks whose batches use different experts stay in step.
    The command joins the session's Ray (RAY_ADDRESS): its own local Ray start is not what this tests."""
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "pipelines.cli.entry", "train", "--distributed", "--config",
           str(ROOT / "configs" / "wan" / "tiny.yaml"), "--output", str(out), "--set", f"model.path={a14b_dir}",
           "--set", "train.steps=4", "--set", "distributed.num_workers=2", "--set", f"train.cache_dir={tmp_path / 'c'}",
           "--set", f"distributed.storage_path={tmp_path / 'ray'}"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, env=ray_env)
    assert r.returncode == 0, r.stderr[-3000:]
    from unlearn.eraser import read_eraser

    es = read_eraser(out / "eraser")
    assert es.meta.num_blocks == 4
    assert all(float(e.up.weight.detach().abs().sum()) > 0 for e in es.erasers.values()), "every expert's erasers moved"
