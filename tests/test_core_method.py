"""Method core on a tiny random CogVideoX (RoPE on): what the family contract (test_family_contract.py) does not cover."""

from __future__ import annotations

import pytest
import torch

from tests.family_cases import perturb
from unlearn.attention import attention_with_lse, streaming_logsumexp, text_column_probs
from unlearn.config import LossConfig
from unlearn.eraser import BrokenEraserError, EraserSet, load_eraser, read_eraser, save_eraser
from unlearn.masks import ConceptNotInPromptError, concept_token_positions, localization_mask, selector
from unlearn.models.cogvideox import CogVideoXSpec, load_components
from unlearn.step import ErasureObjective, StepBatch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir  # tests/conftest.py: built once per session


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


def test_eraser_param_count_matches_reference_formula(spec):
    # 2B reference: 30 blocks x (1920*128 + 128 + 128*1920 + 1920) = 14.8M
    per_block = lambda d, r: d * r + r + r * d + d  # noqa: E731
    assert per_block(1920, 128) * 30 == 14_807_040
    es = EraserSet.for_spec(spec, rank=4)
    assert es.num_parameters() == per_block(spec.hidden_size(), 4) * len(spec.blocks())


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


def _qkv(seed=0, b=2, h=3, nq=50, nk=60, d=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, nq, d, generator=g) * 3, torch.randn(b, h, nk, d, generator=g) * 3,
            torch.randn(b, h, nk, d, generator=g))


def explicit_text_probs(q, k, text_len):
    """The full attention matrix by hand, fp32: softmax over all keys, text columns, head mean."""
    p = torch.softmax(q.float() @ k.float().transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
    return p[..., :text_len].mean(1)


def test_text_probs_from_the_kernels_lse_equal_an_explicit_fp32_softmax():
    """Joint attention (10 text keys first, then 50 video keys): the log-sum-exp over all keys comes from the SDPA
    kernel (whose output is SDPA's, bit for bit), the 10 text columns are computed on top, at any chunk size."""
    q, k, v = _qkv()
    out, lse = attention_with_lse(q, k, v)
    assert torch.equal(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    assert lse.shape == (2, 3, 50) and lse.dtype == torch.float32
    full = explicit_text_probs(q[:, :, 10:], k, 10)
    for chunk in (1, 13, 64):
        got = text_column_probs(q[:, :, 10:], k[:, :, :10], 8**-0.5, lse[:, :, 10:], chunk)
        assert torch.allclose(got, full, atol=1e-5), (got - full).abs().max()
    # where no fused kernel applies: the streaming log-sum-exp (chunk x chunk scores), the same numbers
    assert torch.allclose(streaming_logsumexp(q, k, 8**-0.5, 7), lse, atol=2e-5)
    # cross attention (the keys are the text): no lse, each row normalised over its text keys
    for chunk in (1, 13, 64):
        assert torch.allclose(text_column_probs(q, k[:, :, :10], 8**-0.5, None, chunk),
                              explicit_text_probs(q, k[:, :, :10], 10), atol=1e-6)


def test_capture_under_autocast_is_fp32_arithmetic():
    """Under bf16 autocast the attention runs on bf16 q, k (SDPA's autocast rule) and the capture takes those same
    q, k, in fp32 with autocast off: the explicit fp32 softmax of the bf16-rounded q, k within 1e-4 (the capture
    that matmul'd under autocast was bf16 arithmetic: 3.5e-2 off here)."""
    q, k, v = _qkv()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, lse = attention_with_lse(q, k, v)
        assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
        qb, kb = q.bfloat16(), k.bfloat16()
        joint = text_column_probs(qb[:, :, 10:], kb[:, :, :10], 8**-0.5, lse[:, :, 10:], 13)
        cross = text_column_probs(qb, kb[:, :, :10], 8**-0.5, None, 13)
    assert joint.dtype == cross.dtype == torch.float32
    assert torch.allclose(joint, explicit_text_probs(qb[:, :, 10:], kb, 10), atol=1e-4)
    assert torch.allclose(cross, explicit_text_probs(qb, kb[:, :, :10], 10), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_capture_kernels_run_on_meta(dtype):
    """`meta` stands in for CUDA: the fused kernel with its lse (flash for bf16, memory-efficient for fp32) and the
    text columns have meta implementations."""
    q, k, v = (t.to("meta", dtype) for t in _qkv())
    out, lse = attention_with_lse(q, k, v)
    assert out.device.type == "meta" and out.dtype == dtype and lse.shape == (2, 3, 50)
    got = text_column_probs(q[:, :, 10:], k[:, :, :10], 8**-0.5, lse[:, :, 10:], 16)
    assert got.device.type == "meta" and got.shape == (2, 40, 10) and got.dtype == torch.float32


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


def test_loss_falls_on_a_fixed_batch(spec):
    cfg = LossConfig(eta=3.0, w_localize=1.0, localize_reduction="mean")
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




@pytest.mark.parametrize("poison", [float("nan"), 1e30])
def test_a_broken_eraser_is_never_written(spec, tmp_path, poison):
    """lr 1e30 for one step gives weights ~1e30: such an eraser destroys output, it must not be saved."""
    es = EraserSet.for_spec(spec, rank=4)
    with torch.no_grad():
        next(iter(es.erasers.values())).up.weight.fill_(poison)
    with pytest.raises(BrokenEraserError, match="up.weight"):
        save_eraser(es, tmp_path / "er")
    assert not (tmp_path / "er").exists()


def test_localize_reduction_sum_is_the_reference_scale(spec):
    """DESIGN §1 sums ||E||^2 over D; "mean" is that divided by the hidden size, nothing else changes."""
    losses = {}
    for red in ("sum", "mean"):
        torch.manual_seed(0)
        es = EraserSet.for_spec(spec, rank=4)
        perturb(es)
        obj = ErasureObjective(spec, es, LossConfig(w_localize=1.0, mask_threshold=0.3, localize_reduction=red))
        losses[red] = obj(_batch(spec))
        obj.detach()
    d = spec.hidden_size()
    assert torch.allclose(losses["sum"]["l_localize"], losses["mean"]["l_localize"] * d, rtol=1e-5)
    assert torch.equal(losses["sum"]["l_unlearn"], losses["mean"]["l_unlearn"])


def test_embedding_fingerprint_depends_on_encode_dtype(model_dir, tmp_path):
    from unlearn.embedding_cache import EmbeddingCache

    a = EmbeddingCache(tmp_path, model_dir, 16, "float32")
    b = EmbeddingCache(tmp_path, model_dir, 16, "bfloat16")
    assert a.fingerprint != b.fingerprint and a.dir != b.dir
    b.fill(["a naked body"])
    assert b.get(["a naked body"]).dtype == torch.bfloat16 and a.missing(["a naked body"]) == ["a naked body"]
