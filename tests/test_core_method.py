"""Method core on a tiny random CogVideoX (RoPE on): erasers, attention capture, masks, fused step."""

from __future__ import annotations

import copy

import pytest
import torch

from unlearn.attention import AttentionCapture, text_column_probs
from unlearn.config import LossConfig
from unlearn.eraser import EraserSet, attach, load_eraser, read_eraser, save_eraser
from unlearn.masks import ConceptNotInPromptError, concept_token_positions, localization_mask, selector
from unlearn.models.cogvideox import CogVideoXSpec, load_components
from unlearn.models.tiny import make_tiny_model
from unlearn.naive import NaiveObjective
from unlearn.step import ErasureObjective, StepBatch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture()
def spec(model_dir):
    return CogVideoXSpec.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return load_components(model_dir, components=("tokenizer",))["tokenizer"]


def inputs(spec, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ls = spec.latent_shape(9, 32, 32)
    x = torch.randn((b, *ls), generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    e = torch.randn((b, spec.text_len, 32), generator=g)
    return x, t, e


def perturb(eraser_set: EraserSet, seed: int = 1, scale: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in eraser_set.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_attach_is_exact_noop_at_init(spec):
    x, t, e = inputs(spec)
    base = spec.velocity(x, t, e)
    handle = attach(spec.transformer, EraserSet.for_spec(spec, rank=4))
    assert torch.equal(spec.velocity(x, t, e), base)
    handle.remove()


def test_disabled_reproduces_base_and_enabled_differs(spec):
    x, t, e = inputs(spec)
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


def test_remove_restores_module_tree_and_keys(spec):
    tr = spec.transformer
    keys = list(tr.state_dict().keys())
    modules = [n for n, _ in tr.named_modules()]
    x, t, e = inputs(spec)
    base = spec.velocity(x, t, e)
    es = EraserSet.for_spec(spec, rank=4)
    perturb(es)
    handle = attach(tr, es)
    assert list(tr.state_dict().keys()) == keys, "attach must not rename or add backbone weights"
    handle.remove()
    assert [n for n, _ in tr.named_modules()] == modules
    assert list(tr.state_dict().keys()) == keys
    assert all(not blk.attn1._forward_hooks for blk in tr.transformer_blocks)
    assert torch.equal(spec.velocity(x, t, e), base)


def test_only_eraser_params_train(spec):
    obj = ErasureObjective(spec, EraserSet.for_spec(spec, rank=4), LossConfig())
    names = [n for n, p in obj.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("erasers.") for n in names)
    assert not any(p.requires_grad for p in spec.transformer.parameters())
    assert sum(p.numel() for p in obj.parameters()) == obj.erasers.num_parameters()
    obj.detach()


def test_eraser_param_count_matches_reference_formula(spec):
    # 2B reference: 30 blocks x (1920*128 + 128 + 128*1920 + 1920) = 14.8M
    per_block = lambda d, r: d * r + r + r * d + d  # noqa: E731
    assert per_block(1920, 128) * 30 == 14_807_040
    es = EraserSet.for_spec(spec, rank=4)
    assert es.num_parameters() == per_block(spec.hidden_size(), 4) * len(spec.blocks())


def test_save_load_is_bit_exact_and_loads_into_pipeline(spec, model_dir, tmp_path):
    es = EraserSet.for_spec(spec, rank=4, target_concept="naked", base_model=str(model_dir))
    perturb(es)
    save_eraser(es, tmp_path / "er")
    assert sorted(p.name for p in (tmp_path / "er").iterdir()) == ["eraser.safetensors", "eraser_config.json"]
    back = read_eraser(tmp_path / "er")
    for (k1, v1), (k2, v2) in zip(es.state_dict().items(), back.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    assert back.meta.target_concept == "naked"
    from unlearn.models.cogvideox import load_pipeline

    pipe = load_pipeline(model_dir)
    handle = load_eraser(pipe, tmp_path / "er")
    x, t, e = inputs(spec)
    ref_handle = attach(spec.transformer, es)
    assert torch.equal(CogVideoXSpec(pipe.transformer, pipe.scheduler, 4).velocity(x, t, e), spec.velocity(x, t, e))
    handle.remove(), ref_handle.remove()


def test_mismatched_load_names_both_shapes(tmp_path, model_dir):
    from unlearn.models.tiny import build_tiny_pipeline

    other = build_tiny_pipeline(num_layers=3)
    es = EraserSet.for_spec(CogVideoXSpec(other.transformer, other.scheduler, 4), rank=4)
    save_eraser(es, tmp_path / "er3")
    spec = CogVideoXSpec.from_pretrained(model_dir)
    with pytest.raises(ValueError, match=r"3 blocks x hidden 32.*2 blocks x hidden 32"):
        load_eraser(spec.transformer, tmp_path / "er3")


def test_corrupt_eraser_file_errors_clearly(tmp_path, spec):
    es = EraserSet.for_spec(spec, rank=4)
    save_eraser(es, tmp_path / "er")
    cfg = (tmp_path / "er" / "eraser_config.json")
    cfg.write_text(cfg.read_text().replace('"rank": 4', '"rank": 5'))
    with pytest.raises(ValueError, match="shape"):
        read_eraser(tmp_path / "er")


def _explicit_reference(attn, norm_hidden, norm_text, rope):
    """Full joint softmax computed by hand from the module's weights (post-norm, post-RoPE)."""
    from diffusers.models.embeddings import apply_rotary_emb

    nt = norm_text.shape[1]
    hs = torch.cat([norm_text, norm_hidden], 1)
    b, n, _ = hs.shape
    h = attn.heads
    q = attn.to_q(hs).view(b, n, h, -1).transpose(1, 2)
    k = attn.to_k(hs).view(b, n, h, -1).transpose(1, 2)
    v = attn.to_v(hs).view(b, n, h, -1).transpose(1, 2)
    q, k = attn.norm_q(q), attn.norm_k(k)
    q = torch.cat([q[:, :, :nt], apply_rotary_emb(q[:, :, nt:], rope)], 2)
    k = torch.cat([k[:, :, :nt], apply_rotary_emb(k[:, :, nt:], rope)], 2)
    p = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
    out = (p @ v).transpose(1, 2).reshape(b, n, -1)
    out = attn.to_out[0](out)
    return p[:, :, nt:, :nt].mean(1), out[:, nt:]


@pytest.mark.parametrize("chunk", [1, 7, 16, 4096])
def test_captured_attention_equals_full_softmax(spec, chunk):
    assert spec.transformer.config.use_rotary_positional_embeddings
    attn_mods = [spec.attention(b) for b in spec.blocks()]
    seen = {}

    def grab(mod, args, kwargs):
        seen["args"] = (kwargs["hidden_states"], kwargs["encoder_hidden_states"], kwargs["image_rotary_emb"])

    hook = attn_mods[1].register_forward_pre_hook(grab, with_kwargs=True)
    x, t, e = inputs(spec, b=3)
    base = spec.velocity(x, t, e)
    cap = AttentionCapture(attn_mods, layers=[0, 1], chunk=chunk)
    with torch.no_grad(), cap.capturing(2):
        out = spec.velocity(x, t, e)
    hook.remove()
    assert torch.allclose(out, base, atol=1e-6), "capturing processor must not change the model output"
    ref_probs, ref_video_out = _explicit_reference(attn_mods[1], *seen["args"])
    got = cap.probs()[1]
    assert got.shape == (2, spec.token_layout(x.shape[1:]).video_len, spec.text_len)
    assert torch.allclose(got, ref_probs[:2], atol=1e-5)
    # The explicit matrix reproduces the block's real attention output => it is the attention the model uses.
    video_out, _ = attn_mods[1](*seen["args"][:2], image_rotary_emb=seen["args"][2])
    assert torch.allclose(video_out, ref_video_out, atol=1e-5)
    cap.remove()


def test_chunked_probs_match_naive_on_random_tensors():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 50, 8, generator=g) * 3
    k = torch.randn(2, 3, 60, 8, generator=g) * 3
    full = torch.softmax(q @ k.transpose(-1, -2) * 0.35, -1)[..., :10].mean(1)
    for chunk in (1, 13, 64):
        assert torch.allclose(text_column_probs(q, k, 10, 0.35, chunk), full, atol=1e-6)


def test_concept_token_positions(tokenizer):
    # "naked" is a whole-word piece; "xyzzy" is out of vocabulary and splits into characters.
    pos = concept_token_positions(tokenizer, "a naked body", "naked", 16)
    assert pos == [1]
    multi = concept_token_positions(tokenizer, "a naked body", "naked body", 16)
    assert multi == [1, 2]
    ids = tokenizer("a xyzzy dog", add_special_tokens=False).input_ids
    pieces = concept_token_positions(tokenizer, "a xyzzy dog", "xyzzy", 16)
    assert len(pieces) >= 5 and pieces[0] == 1 and ids[-1] == tokenizer("dog", add_special_tokens=False).input_ids[-1]
    with pytest.raises(ConceptNotInPromptError, match=r"'nude'.*'a naked body'"):
        concept_token_positions(tokenizer, "a naked body", "nude", 16)


def test_mask_is_per_frame_normalised_and_thresholded():
    probs = torch.zeros(1, 2 * 4, 3)
    probs[0, 1, 0] = 0.9  # frame 0: token 1 attends to the concept
    probs[0, 4 + 2, 0] = 0.1  # frame 1: weaker, but the per-frame max still reaches 1
    sel = selector([[0]], 3)
    mask, soft = localization_mask([probs], sel, (2, 2, 2), threshold=0.5)
    assert mask[0].tolist() == [0, 1, 0, 0, 0, 0, 1, 0]
    assert soft.max() == 1.0


def _batch(spec, b=2, k=2, p=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    ls = spec.latent_shape(9, 32, 32)
    r = lambda *s: torch.randn(s, generator=g)  # noqa: E731
    sel = selector([[1], [1, 2]][:b], spec.text_len)
    return StepBatch(
        x_c=r(b, *ls), t_c=torch.randint(0, 1000, (b,), generator=g), emb_c=r(b, spec.text_len, 32),
        emb_ref=r(b, k, spec.text_len, 32), sel=sel, x_p=r(p, *ls), t_p=torch.randint(0, 1000, (p,), generator=g),
        emb_p=r(p, spec.text_len, 32),
    )


@pytest.mark.parametrize("second_copy", [False, True])
def test_fused_step_equals_naive_step(model_dir, second_copy):
    spec_a = CogVideoXSpec.from_pretrained(model_dir)
    spec_b = CogVideoXSpec.from_pretrained(model_dir)
    cfg = LossConfig(eta=3.0, w_unlearn=1.0, w_preserve=0.5, w_localize=2.0, mask_threshold=0.3)
    es_a = EraserSet.for_spec(spec_a, rank=4)
    perturb(es_a)
    es_b = copy.deepcopy(es_a)
    fused = ErasureObjective(spec_a, es_a, cfg)
    original = CogVideoXSpec.from_pretrained(model_dir) if second_copy else None
    naive = NaiveObjective(spec_b, es_b, cfg, original_spec=original)
    batch = _batch(spec_a)
    lf, ln = fused(batch), naive(batch)
    for key in ("loss", "l_unlearn", "l_preserve", "l_localize", "mask_fraction"):
        assert torch.allclose(lf[key], ln[key], atol=1e-5, rtol=1e-5), key
    assert lf["l_localize"] > 0 and lf["l_preserve"] > 0
    lf["loss"].backward()
    ln["loss"].backward()
    for (n, pa), (_, pb) in zip(es_a.named_parameters(), es_b.named_parameters()):
        assert pa.grad is not None and pa.grad.abs().sum() > 0, n
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5, rtol=1e-4), n


def test_loss_falls_on_a_fixed_batch(spec):
    cfg = LossConfig(eta=3.0, w_localize=1.0)
    obj = ErasureObjective(spec, EraserSet.for_spec(spec, rank=8), cfg)
    opt = torch.optim.AdamW(obj.parameters(), lr=5e-3)
    batch = _batch(spec)
    first = None
    for _ in range(60):
        losses = obj(batch)
        first = first if first is not None else float(losses["loss"].detach())
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert float(obj(batch)["loss"].detach()) < 0.6 * first
    obj.detach()


def test_gradient_checkpointing_gives_same_grads(model_dir):
    grads = []
    for ckpt in (False, True):
        spec = CogVideoXSpec.from_pretrained(model_dir)
        if ckpt:
            spec.transformer.enable_gradient_checkpointing()
        torch.manual_seed(0)
        es = EraserSet.for_spec(spec, rank=4)
        perturb(es)
        obj = ErasureObjective(spec, es, LossConfig(w_localize=1.0))
        obj(_batch(spec))["loss"].backward()
        grads.append([p.grad.clone() for p in es.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
