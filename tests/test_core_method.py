"""Method core on a tiny random CogVideoX (RoPE on): what the family contract (test_family_contract.py) does not cover."""

from __future__ import annotations

import pytest
import torch

from tests.family_cases import perturb
from unlearn.attention import text_column_probs
from unlearn.config import LossConfig
from unlearn.eraser import BrokenEraserError, EraserSet, load_eraser, read_eraser, save_eraser
from unlearn.masks import ConceptNotInPromptError, concept_token_positions, localization_mask, selector
from unlearn.models.cogvideox import CogVideoXSpec, load_components
from unlearn.models.tiny import make_tiny_model
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
