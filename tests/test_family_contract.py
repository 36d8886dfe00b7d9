"""The model-seam contract, run for every registered family (tests/family_cases.py).

No-op at init, `disabled()` equals the base model, hooks leave no trace, only erasers
train, save/load is bit-exact and attaches to the family's real pipeline, the captured
attention equals an explicit softmax, the fused step equals the naive one, gradient
checkpointing changes nothing, the recorded eraser energy is what the loss needs.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from tests.family_cases import CASES, perturb
from unlearn.attention import AttentionCapture
from unlearn.config import LossConfig
from unlearn.eraser import EraserSet, attach, load_eraser, read_eraser, save_eraser
from unlearn.masks import selector
from unlearn.models.families import family_names, spec_class, tiny_builder
from unlearn.naive import NaiveObjective
from unlearn.step import ErasureObjective, StepBatch

torch.set_num_threads(1)


def test_every_registered_family_has_a_contract_case():
    assert sorted({c.family for c in CASES}) == family_names()


@pytest.fixture(scope="module", params=CASES, ids=str)
def case(request):
    return request.param


@pytest.fixture(scope="module")
def model_dir(case, tmp_path_factory):
    return tiny_builder(case.family)(tmp_path_factory.mktemp(f"tiny-{case}") / "model", seed=0, **case.tiny_kwargs)


def load_spec(case, model_dir):
    return spec_class(case.family).from_pretrained(model_dir)


@pytest.fixture()
def spec(case, model_dir):
    return load_spec(case, model_dir)


def inputs(case, spec, b=2, seed=0):
    """A batch for one forward. A two-expert model gets high-noise timesteps only, so the generic checks
    below see one expert's modules (batches mixing the experts: tests/test_wan_experts.py and the steps)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((b, *spec.latent_shape(*case.geometry)), generator=g)
    t = spec.sample_timesteps(b, g)
    if case.experts > 1:
        t = spec.transformer.boundary + (spec.num_train_timesteps - spec.transformer.boundary) * t / spec.num_train_timesteps
    e = torch.randn((b, spec.text_len, case.text_dim), generator=g)
    return x, t, e


def batch_for(case, spec, b=2, k=2, p=2, seed=3) -> StepBatch:
    g = torch.Generator().manual_seed(seed)
    ls = spec.latent_shape(*case.geometry)
    r = lambda *s: torch.randn(s, generator=g)  # noqa: E731
    d = case.text_dim
    t_c, t_p = spec.sample_timesteps(b, g), spec.sample_timesteps(p, g)
    if case.experts > 1:  # rows of both experts in one step: concept row 0 high noise, row 1 low; preserved too
        edge = spec.transformer.boundary
        t_c, t_p = torch.tensor([edge + 50.0, edge - 300.0][:b]), torch.tensor([edge - 500.0, edge + 20.0][:p])
    return StepBatch(
        x_c=r(b, *ls), t_c=t_c, emb_c=r(b, spec.text_len, d),
        emb_ref=r(b, k, spec.text_len, d), sel=selector([[1], [1, 2]][:b], spec.text_len),
        x_p=r(p, *ls), t_p=t_p, emb_p=r(p, spec.text_len, d),
    )


def test_attach_is_exact_noop_at_init(case, spec):
    x, t, e = inputs(case, spec)
    base = spec.velocity(x, t, e)
    handle = attach(spec.transformer, EraserSet.for_spec(spec, rank=4))
    assert torch.equal(spec.velocity(x, t, e), base)
    handle.remove()


def test_disabled_reproduces_base_and_enabled_differs(case, spec):
    x, t, e = inputs(case, spec)
    base = spec.velocity(x, t, e)
    es = EraserSet.for_spec(spec, rank=4)
    perturb(es)
    handle = attach(spec.transformer, es)
    erased = spec.velocity(x, t, e)
    with handle.disabled():
        off = spec.velocity(x, t, e)
    assert torch.equal(off, base)
    assert (erased - base).abs().max() > 1e-3
    handle.remove()


def test_remove_restores_module_tree_and_keys(case, spec):
    tr = spec.transformer
    keys = list(tr.state_dict().keys())
    modules = [n for n, _ in tr.named_modules()]
    x, t, e = inputs(case, spec)
    base = spec.velocity(x, t, e)
    es = EraserSet.for_spec(spec, rank=4)
    perturb(es)
    handle = attach(tr, es)
    assert list(tr.state_dict().keys()) == keys, "attach must not rename or add backbone weights"
    assert all(m._forward_hooks for m in spec.eraser_modules(tr))
    handle.remove()
    assert [n for n, _ in tr.named_modules()] == modules
    assert list(tr.state_dict().keys()) == keys
    assert all(not m._forward_hooks for m in spec.eraser_modules(tr))
    assert torch.equal(spec.velocity(x, t, e), base)


def test_only_eraser_params_train(case, spec):
    obj = ErasureObjective(spec, EraserSet.for_spec(spec, rank=4), LossConfig())
    names = [n for n, p in obj.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("erasers.") for n in names)
    assert not any(p.requires_grad for p in spec.transformer.parameters())
    assert sum(p.numel() for p in obj.parameters()) == obj.erasers.num_parameters()
    obj.detach()


def test_save_load_is_bit_exact_and_loads_into_the_family_pipeline(case, spec, model_dir, tmp_path):
    es = EraserSet.for_spec(spec, rank=4, target_concept="naked", base_model=str(model_dir))
    perturb(es)
    save_eraser(es, tmp_path / "er")
    assert sorted(p.name for p in (tmp_path / "er").iterdir()) == ["eraser.safetensors", "eraser_config.json"]
    back = read_eraser(tmp_path / "er")
    assert back.meta.model_family == case.family
    for (k1, v1), (k2, v2) in zip(es.state_dict().items(), back.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    pipe = spec_class(case.family).load_pipeline(model_dir, "float32")
    handle = load_eraser(pipe, tmp_path / "er")
    x, t, e = inputs(case, spec)
    ref_handle = attach(spec.transformer, es)
    loaded = spec_class(case.family).from_pipeline(pipe)
    assert loaded.latent_shape(*case.geometry) == spec.latent_shape(*case.geometry)
    assert torch.equal(loaded.velocity(x, t, e), spec.velocity(x, t, e))
    handle.remove(), ref_handle.remove()


def test_eraser_of_another_family_is_refused_naming_both(case, spec, tmp_path):
    es = EraserSet.for_spec(spec, rank=4)
    save_eraser(es, tmp_path / "er")
    with pytest.raises(ValueError, match=rf"trained on a '{case.family}' model.*'Linear'"):
        load_eraser(torch.nn.Linear(4, 4), tmp_path / "er")


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_captured_attention_equals_explicit_softmax(case, spec, chunk):
    check_capture_against_explicit_softmax(case, spec, chunk)


def test_captured_attention_without_a_fused_kernel_lse_equals_explicit_softmax(case, spec, monkeypatch):
    """Where no fused SDPA kernel gives the log-sum-exp (another device, the math backend), the capture streams
    it (chunk x chunk scores): the same probabilities. Cross attention (Wan) never needs one."""
    import unlearn.models.cogvideox_attention as cog

    monkeypatch.setattr(cog, "attention_with_lse",
                        lambda q, k, v: (torch.nn.functional.scaled_dot_product_attention(q, k, v), None))
    check_capture_against_explicit_softmax(case, spec, 7)


def check_capture_against_explicit_softmax(case, spec, chunk):
    mods = spec.capture_modules(spec.transformer)
    seen = {}
    # the call's arguments by name (Wan's blocks call attn2 positionally, CogVideoX's by keyword)
    hook = mods[1].register_forward_pre_hook(
        lambda m, a, kw: seen.update(kw, **dict(zip(inspect.signature(m.forward).parameters, a))), with_kwargs=True)
    x, t, e = inputs(case, spec, b=3)
    base = spec.velocity(x, t, e)
    cap = AttentionCapture(mods, spec.capture_processor, layers=[0, 1], chunk=chunk)
    with torch.no_grad(), cap.capturing(2):
        out = spec.velocity(x, t, e)
    hook.remove()
    assert torch.allclose(out, base, atol=1e-6), "the capturing processor must not change the model output"
    ref_probs, ref_video_out = case.explicit_attention(mods[1], seen)
    got = cap.probs()[1]
    assert got.shape == (2, spec.token_layout(x.shape[1:]).video_len, spec.text_len)
    assert torch.allclose(got, ref_probs[:2], atol=1e-5)
    cap.remove()
    # The explicit matrix reproduces the module's real output => it is the attention the model uses.
    with torch.no_grad():
        video_out = spec.video_of(mods[1](**seen))
    assert torch.allclose(video_out, ref_video_out, atol=1e-5)


@pytest.mark.parametrize("second_copy", [False, True])
def test_fused_step_equals_naive_step(case, model_dir, second_copy):
    spec_a, spec_b = load_spec(case, model_dir), load_spec(case, model_dir)
    cfg = LossConfig(eta=3.0, w_unlearn=1.0, w_preserve=0.5, w_localize=2.0, mask_threshold=0.3)
    es_a = EraserSet.for_spec(spec_a, rank=4)
    perturb(es_a)
    es_b = copy.deepcopy(es_a)
    fused = ErasureObjective(spec_a, es_a, cfg)
    original = load_spec(case, model_dir) if second_copy else None
    naive = NaiveObjective(spec_b, es_b, cfg, original_spec=original)
    batch = batch_for(case, spec_a)
    lf, ln = fused(batch), naive(batch)
    for key in ("loss", "l_unlearn", "l_preserve", "l_localize", "mask_fraction"):
        assert torch.allclose(lf[key], ln[key], atol=1e-5, rtol=1e-5), key
    assert lf["l_localize"] > 0 and lf["l_preserve"] > 0
    lf["loss"].backward()
    ln["loss"].backward()
    for (n, pa), (_, pb) in zip(es_a.named_parameters(), es_b.named_parameters()):
        assert pa.grad is not None and pa.grad.abs().sum() > 0, n
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5, rtol=1e-4), n


def test_gradient_checkpointing_gives_same_grads(case, model_dir):
    grads = []
    for ckpt in (False, True):
        spec = load_spec(case, model_dir)
        if ckpt:
            spec.transformer.enable_gradient_checkpointing()
        torch.manual_seed(0)
        es = EraserSet.for_spec(spec, rank=4)
        perturb(es)
        obj = ErasureObjective(spec, es, LossConfig(w_localize=1.0))
        obj(batch_for(case, spec))["loss"].backward()
        grads.append([p.grad.clone() for p in es.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_recording_keeps_only_the_concept_rows_energy(case, spec):
    """The hook keeps [rows, Nv] energies (sum over D, or mean), not the [B+P, Nv, D] outputs."""
    mods = spec.eraser_modules(spec.transformer)
    raw = {}  # the modules' own video outputs: these hooks run before the eraser's (registered first)
    grabs = [m.register_forward_hook(lambda mod, a, o, i=i: raw.__setitem__(i, spec.video_of(o).detach()))
             for i, m in enumerate(mods)]
    es = EraserSet.for_spec(spec, rank=4)
    perturb(es)
    handle = attach(spec.transformer, es)
    x, t, e = inputs(case, spec, b=3)
    with handle.recording(2, "sum") as rec_sum:
        spec.velocity(x, t, e)
    with handle.recording(2, "mean") as rec_mean:
        spec.velocity(x, t, e)
    for g in grabs:
        g.remove()
    d, nv = spec.hidden_size(), spec.token_layout(x.shape[1:]).video_len
    assert sorted(rec_sum) == list(range(len(mods) // case.experts))  # one record per (logical) block
    for i, energy in rec_sum.items():
        assert energy.shape == (2, nv) and energy.dtype == torch.float32 and energy.requires_grad
        delta = es.erasers[str(i)](raw[i])[:2]
        assert torch.allclose(energy, delta.pow(2).sum(-1), rtol=1e-4, atol=1e-7)
        assert torch.allclose(rec_mean[i] * d, energy, rtol=1e-4, atol=1e-7)
    with handle.recording(0) as nothing:
        spec.velocity(x, t, e)
    assert nothing == {}, "rows=0 records nothing (no localization loss, no memory)"
    handle.remove()
