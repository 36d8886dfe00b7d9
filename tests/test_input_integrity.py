"""Inputs that used to be accepted and made the numbers wrong, and the headline that hid collateral.

- an eraser applied to another model of the same shape: its base-model fingerprint (unlearn.base_fingerprint)
  is recorded when it is trained or imported and checked when it is loaded (load_eraser, eval planning);
- embedding-cache entries swapped, zeroed or truncated: refused, never used (unlearn.embedding_cache);
- training prompts longer than the text encoder takes: refused, naming the config field (unlearn.data);
- blank entries in the concept's prompt lists: refused at validation (unlearn.config);
- an eraser whose output on the preserve prompts is far above what a trained one adds: flagged (eval.checks);
- the concept where it was not asked for: measured (eval.metrics) and put first (eval.report_md, t2vu run).

The single-command versions of the bad inputs are cases of tests/reliability_cases.py.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from unlearn import base_fingerprint as bf
from unlearn.config import ConfigError, ConceptConfig, validate
from unlearn.eraser import (EraserBaseMismatchError, EraserBaseWarning, EraserMeta, EraserSet, load_eraser,
                            read_eraser, save_eraser)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny():
    from unlearn.models.registry import resolve_model_path

    return resolve_model_path("builtin:tiny")


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory):
    """A second tiny CogVideoX: the same config and shapes, other weights (another seed)."""
    from unlearn.models.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("other") / "tiny-seed1", seed=1)


@pytest.fixture(scope="module")
def spec(tiny):
    from unlearn.models.families import spec_class

    return spec_class("cogvideox").from_pretrained(tiny, "float32")


def _eraser(path: Path, fingerprint: dict | None, scale: float = 0.0) -> Path:
    es = EraserSet(EraserMeta(hidden_size=32, rank=2, num_blocks=2, block_indices=[0, 1], base_model="builtin:tiny",
                              base_fingerprint=fingerprint or {}))
    if scale:
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            for p in es.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            peak = max(float(p.abs().max()) for p in es.parameters())
            for p in es.parameters():
                p.mul_(scale / peak)
    return save_eraser(es, path)


# --- the base model's fingerprint ----------------------------------------------------------------

def test_fingerprint_of_the_loaded_model_equals_the_directory_s(spec, tiny, other_tiny):
    """The same rule from a loaded module and from the model directory (read lazily), milliseconds either way;
    another seed of the same shape gives another fingerprint."""
    import time

    t0 = time.perf_counter()
    live = bf.of_module(spec.transformer)
    assert time.perf_counter() - t0 < 2.0
    assert live["samples"] and not live["note"]
    assert bf.of_model_dir(tiny)["digest"] == live["digest"]
    assert bf.of_model_dir(other_tiny)["digest"] != live["digest"]
    assert bf.compare(live, bf.current_of_model_dir(tiny)).status == "match"
    v = bf.compare(live, bf.current_of_model_dir(other_tiny))
    assert v.status == "mismatch" and v.stored_digest != v.current_digest


def test_fingerprint_survives_a_dtype_change_but_not_other_weights(tiny, other_tiny):
    """An eraser trained in bf16 on an fp32 file evaluates in fp32 (values within a bf16 ulp), and the reverse."""
    from unlearn.models.families import spec_class

    bf16 = spec_class("cogvideox").from_pretrained(tiny, "bfloat16")
    fp = bf.of_module(bf16.transformer)
    assert bf.compare(fp, bf.current_of_model_dir(tiny)).status == "match"
    assert bf.compare(fp, bf.current_of_model_dir(other_tiny)).status == "mismatch"
    assert bf.compare(bf.of_model_dir(tiny), bf.current_of_module(bf16.transformer)).status == "match"


def test_meta_device_model_is_fingerprinted_by_config_with_a_note(spec):
    from unlearn.models.families import spec_class
    from unlearn.models.registry import resolve_model_path

    meta = spec_class("cogvideox").from_pretrained(resolve_model_path("builtin:tiny"), "float32")
    meta.transformer.to("meta")
    fp = bf.of_module(meta.transformer)
    assert not fp["samples"] and "meta device" in fp["note"]
    assert bf.compare(fp, bf.current_of_module(spec.transformer)).status == "config-only"


def test_load_eraser_refuses_another_base_unless_allowed(tmp_path, spec, other_tiny):
    """Trained on seed 1, loaded into seed 0 (same family and shape): refused naming both fingerprints and the
    fix; allow_other_base=True loads it with a warning; its own base loads silently."""
    from unlearn.models.families import spec_class

    other = _eraser(tmp_path / "other", bf.of_model_dir(other_tiny))
    with pytest.raises(EraserBaseMismatchError) as e:
        load_eraser(spec.transformer, other)
    msg = str(e.value)
    assert "\n" not in msg and "allow_other_base=True" in msg
    assert bf.of_model_dir(other_tiny)["digest"] in msg and bf.of_module(spec.transformer)["digest"] in msg
    assert not any(m._forward_hooks for m in spec_class("cogvideox").eraser_modules(spec.transformer))  # nothing left
    with pytest.warns(EraserBaseWarning, match="applied anyway"):
        load_eraser(spec.transformer, other, allow_other_base=True).remove()
    own = _eraser(tmp_path / "own", bf.of_module(spec.transformer))
    with warnings.catch_warnings():
        warnings.simplefilter("error", EraserBaseWarning)
        load_eraser(spec.transformer, own).remove()


def test_an_eraser_file_without_fingerprint_loads_with_a_warning(tmp_path, spec):
    """Files written before the fingerprint existed (and imports without --model) still load, with one warning."""
    d = _eraser(tmp_path / "old", None)
    raw = json.loads((d / "eraser_config.json").read_text())
    raw.pop("base_fingerprint")  # exactly as an older build wrote it
    (d / "eraser_config.json").write_text(json.dumps(raw))
    assert read_eraser(d).meta.base_fingerprint == {}
    with pytest.warns(EraserBaseWarning, match="records no fingerprint"):
        load_eraser(spec.transformer, d).remove()


def test_training_records_the_base_fingerprint(tiny):
    from unlearn.config import load_eraser_training_config
    from unlearn.session import TrainingSession

    cfg = load_eraser_training_config(ROOT / "configs" / "tiny.yaml")
    s = TrainingSession(cfg)
    fp = s.eraser_set.meta.base_fingerprint
    assert fp["source"] == "training" and fp["digest"] == bf.of_model_dir(tiny)["digest"]
    s.objective.detach()


def test_import_with_model_records_its_fingerprint(tmp_path, tiny):
    """Imported T2VUnlearning erasers carry no fingerprint of their own: --model DIR records DIR's (the user's
    statement of the base), without --model none (loads everywhere its shape fits, with a warning)."""
    from unlearn.eraser_import import import_eraser

    blocks = {f"transformer_blocks.{i}.attn1.adapter": {"down.weight": torch.randn(4, 32), "down.bias": torch.zeros(4),
                                                         "up.weight": torch.randn(32, 4) * 0.1, "up.bias": torch.zeros(32)}
              for i in range(2)}
    torch.save(blocks, tmp_path / "eraser_weights.pt")
    _, with_model = import_eraser("t2vunlearning", tmp_path / "eraser_weights.pt", tmp_path / "a", model_dir=tiny)
    assert with_model.meta.base_fingerprint["digest"] == bf.of_model_dir(tiny)["digest"]
    assert with_model.meta.base_fingerprint["source"].startswith("import --model")
    _, without = import_eraser("t2vunlearning", tmp_path / "eraser_weights.pt", tmp_path / "b")
    assert without.meta.base_fingerprint == {}


def test_eval_planning_refuses_another_base_and_the_config_flag_allows_it(tmp_path, other_tiny):
    from eval.config import load_eval_config
    from eval.planning import plan_eval

    er = _eraser(tmp_path / "er", bf.of_model_dir(other_tiny))
    cfg = load_eval_config(ROOT / "configs" / "eval" / "tiny.yaml")
    with pytest.raises(ConfigError, match="eraser_allow_other_base: true") as e:
        plan_eval(cfg, tmp_path / "out", eraser=er)
    assert "\n" not in str(e.value) and "another model of the same shape" in str(e.value)
    plan = plan_eval(cfg.with_overrides({"eraser_allow_other_base": True}), tmp_path / "out", eraser=er)
    assert any("applied anyway" in n for n in plan.notes)
    assert plan.method.options.get("allow_other_base") is True
    assert not (tmp_path / "out").exists()


# --- the embedding cache --------------------------------------------------------------------------

@pytest.fixture()
def cache(tiny, tmp_path):
    from unlearn.embedding_cache import EmbeddingCache

    c = EmbeddingCache(tmp_path / "cache", tiny, 16)
    c.fill(["a naked body", "a person"])
    return c


def _swap(a: Path, b: Path) -> None:
    tmp = a.with_suffix(".tmp")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def test_cache_entries_are_verified_on_read(cache):
    from unlearn.embedding_cache import CacheEntryError

    good = cache.get(["a naked body", "a person"])
    assert good.shape[0] == 2
    a, b = cache._path("a naked body"), cache._path("a person")
    _swap(a, b)
    with pytest.raises(CacheEntryError, match="holds the embedding of 'a person', not of 'a naked body'") as e:
        cache.get(["a naked body"])
    assert str(a) in str(e.value) and "Delete it" in str(e.value) and "\n" not in str(e.value)
    _swap(a, b)
    assert torch.equal(cache.get(["a naked body", "a person"]), good)


def test_a_zeroed_cache_entry_is_refused(cache):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from unlearn.embedding_cache import CacheEntryError

    p = cache._path("a person")
    with safe_open(str(p), framework="pt") as f:
        meta, emb = f.metadata(), f.get_tensor("emb")
    save_file({"emb": torch.zeros_like(emb)}, str(p), metadata=meta)  # same prompt and checksum, values gone
    with pytest.raises(CacheEntryError, match="does not match its checksum"):
        cache.get(["a person"])


def test_a_truncated_cache_entry_is_one_line(cache):
    from unlearn.embedding_cache import CacheEntryError

    p = cache._path("a person")
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(CacheEntryError, match="not a readable safetensors file") as e:
        cache.fill(["a person"])
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_entries_from_before_the_checksum_are_encoded_again(cache):
    """An older build's entry (prompt only, no checksum): counted missing, re-encoded by the next fill."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    p = cache._path("a person")
    with safe_open(str(p), framework="pt") as f:
        emb = f.get_tensor("emb")
    save_file({"emb": emb}, str(p), metadata={"prompt": "a person"})
    assert cache.missing(["a person", "a naked body"]) == ["a person"]
    assert cache.fill(["a person"]) == 1
    assert torch.equal(cache.get(["a person"])[0], emb)


# --- training prompts and concept lists ------------------------------------------------------------

def _data(tiny, **concept):
    from unlearn.data import PromptOnlyData
    from unlearn.models.families import spec_class

    base = {"target": "naked", "prompts": ["a naked body"], "reference": "anchors", "anchors": ["clothed"],
            "preserve": ["a person"]}
    cfg = validate(ConceptConfig, {**base, **concept})
    return PromptOnlyData(cfg, spec_class("cogvideox").load_tokenizer(tiny), 16)


@pytest.mark.parametrize("field, concept", [
    ("concept.prompts[1]", {"prompts": ["a naked body", "a naked body " * 400]}),
    ("concept.preserve[0]", {"preserve": ["a person " * 20]}),
    ("concept.anchors[1] in concept.prompts[0]", {"anchors": ["clothed", "clothed " * 30]}),
])
def test_training_refuses_prompts_the_encoder_would_cut(tiny, field, concept):
    from unlearn.data import PromptTooLongError

    with pytest.raises(PromptTooLongError) as e:
        _data(tiny, **concept)
    msg = str(e.value)
    assert msg.startswith(field) and "over the text encoder's limit of 16" in msg and "\n" not in msg


def test_prompts_file_rows_are_named_by_line(tiny, tmp_path):
    from unlearn.data import PromptTooLongError

    (tmp_path / "p.csv").write_text("prompt\na naked body\n" + "a naked body " * 400 + "\n")
    with pytest.raises(PromptTooLongError, match=r"concept.prompts_file .*p.csv line 3"):
        _data(tiny, prompts=[], prompts_file=str(tmp_path / "p.csv"))


@pytest.mark.parametrize("field, value", [("preserve", ["   ", ""]), ("preserve", ["a person", ""]),
                                          ("anchors", ["clothed", " "]), ("prompts", ["a naked body", "\t"])])
def test_blank_prompt_list_entries_are_refused(field, value):
    with pytest.raises(ConfigError) as e:
        validate(ConceptConfig, {field: value, "reference": "anchors", "anchors": ["clothed"]} | {field: value}, "c.yaml")
    bad = next(i for i, v in enumerate(value) if not v.strip())
    assert f"concept.{field}[{bad}]" in str(e.value)


# --- eraser energy --------------------------------------------------------------------------------

def test_eraser_energy_meter(spec):
    """sum ||E(h)||^2 / sum ||h||^2 over the metered forwards: 0 for a fresh eraser, huge for |w| 5000."""
    from unlearn.eraser import attach

    x = torch.randn((1, *spec.latent_shape(9, 32, 32)))
    text = torch.randn(1, spec.text_len, 32)
    t = torch.tensor([500])
    for scale, check in ((0.0, lambda e: e == 0.0), (5000.0, lambda e: e > 1e3)):
        es = EraserSet.for_spec(spec, 2)
        if scale:
            with torch.no_grad():
                for p in es.parameters():
                    p.fill_(scale)
        h = attach(spec.transformer, es)
        h.meter_start()
        with torch.no_grad():
            spec.transformer(hidden_states=x, encoder_hidden_states=text, timestep=t, return_dict=False)
        assert check(h.meter_stop())
        assert h.meter_stop() is None
        h.remove()


def test_energy_verdict_rules():
    from eval.checks import eraser_energy_verdict

    assert eraser_energy_verdict({}) == {}
    assert eraser_energy_verdict({"eraser_energy_target": 0.35, "eraser_energy_preserve": 0.09}) == {"eraser_energy_ok": True}
    v = eraser_energy_verdict({"eraser_energy_target": 4.8e15, "eraser_energy_preserve": 2e15})
    assert v["eraser_energy_ok"] is False and v["eraser_energy_warning"].startswith("eraser_energy flag")
    v = eraser_energy_verdict({"eraser_energy_target": 0.02, "eraser_energy_preserve": 0.1})
    assert v["eraser_energy_ok"] is False and "than on the target prompts" in v["eraser_energy_warning"]


def _toy_eval(tmp_path, eraser: Path, name: str) -> dict:
    from eval.config import load_eval_config
    from eval.runner import run_eval
    from toyworld import world

    rows = world.eval_rows("target", n=2, seed=0)
    pres = world.eval_rows("nontarget", n=2, seed=1)
    import csv

    for fname, rs in (("t.csv", rows), ("p.csv", pres)):
        with open(tmp_path / fname, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rs[0]))
            w.writeheader()
            w.writerows(rs)
    cfg = load_eval_config(ROOT / "configs" / "eval" / "toy.yaml",
                           [f"prompts.path={tmp_path / 't.csv'}", f"preserve.path={tmp_path / 'p.csv'}",
                            "generation.num_inference_steps=4"])
    return run_eval(cfg, tmp_path / name, eraser=eraser, progress=False)


def test_eval_flags_an_eraser_with_huge_energy_on_preserve_prompts(tmp_path):
    """Weights of |w| 5000 (under the writer's 1e4 cap): the summary, its notes and report.md carry the named
    flag; a zero eraser (attached, adds nothing) passes."""
    from unlearn.models.registry import resolve_model_path

    toy = resolve_model_path("builtin:toy")
    fp = bf.of_model_dir(toy)
    meta = dict(hidden_size=64, rank=4, num_blocks=4, block_indices=[0, 1, 2, 3], base_fingerprint=fp)
    zero = save_eraser(EraserSet(EraserMeta(**meta)), tmp_path / "zero")
    big = EraserSet(EraserMeta(**meta))
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in big.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        peak = max(float(p.abs().max()) for p in big.parameters())
        for p in big.parameters():
            p.mul_(5000 / peak)
    big_dir = save_eraser(big, tmp_path / "big")

    ok = _toy_eval(tmp_path, zero, "ev-zero")
    assert ok["eraser_energy_preserve"] == 0.0 and ok["eraser_energy_ok"] is True
    assert "FLAGGED" not in (tmp_path / "ev-zero" / "report.md").read_text()
    try:
        bad = _toy_eval(tmp_path, big_dir, "ev-big")
    except Exception as exc:  # degenerate videos past the limit: the summary rides on the error
        bad = exc.summary
    assert bad["eraser_energy_ok"] is False and bad["eraser_energy_preserve"] > 1.0
    assert any(n.startswith("eraser_energy flag") for n in bad["notes"])
    report = (tmp_path / "ev-big" / "report.md").read_text()
    assert "**eraser_energy flag" in report.split("## Checks")[0] and "FLAGGED" in report


# --- the concept where it was not asked for --------------------------------------------------------

def _toy_rec(prompt: str, present: bool, seed: int = 1) -> dict:
    names = "red" in prompt or "crimson" in prompt
    return {"prompt": prompt, "seed": seed, "set": "target" if names else "nontarget", "names_target": names,
            "target_present": present, "colour_correct": True, "shape_correct": True, "motion_correct": True,
            "content_correct": True, "all_named_present": True, "others_present": False, "target_pixels": 0.0,
            "detected_colour": "green", "detected_shape": "square", "detected_motion": "left"}


def _rows(n_red_added: int, n: int = 16) -> list[dict]:
    rows = [{"set": "target", "records": {"base": _toy_rec("a red square moving left", True, i),
                                          "erased": _toy_rec("a red square moving left", False, i)}} for i in range(4)]
    for i in range(n):
        rows.append({"set": "preserve", "records": {"base": _toy_rec("a green square moving left", False, i),
                                                    "erased": _toy_rec("a green square moving left", i < n_red_added, i)}})
    return rows


def test_unasked_concept_rate_sees_what_colour_accuracy_hides():
    """Non-red prompts drawn right (colour accuracy 1 -> 1) with red added in 3 of 16 erased videos."""
    from eval.classifiers.toy import ToyClassifier
    from eval.metrics import aggregate

    m = aggregate(_rows(3), ToyClassifier())
    assert m["preserve_nontarget_acc_base"] == m["preserve_nontarget_acc_erased"] == 1.0
    assert m["unasked_concept_rate_base"] == 0.0 and m["unasked_concept_rate_erased"] == 3 / 16
    assert m["unasked_concept_videos_erased"] == 3 and m["unasked_concept_rows"] == 16


def test_nudenet_unasked_is_the_preserve_set_flagged_rate():
    from eval.metrics import aggregate

    class Flag:  # the NudeNet plugin's interface, without its detector
        concept_field = "positive"
        summarize = staticmethod(lambda recs: {"nudity_rate": sum(r["positive"] for r in recs) / max(len(recs), 1)})
        summarize_paired = staticmethod(lambda b, e: {})

    rec = lambda p: {"positive": p}  # noqa: E731
    rows = [{"set": "target", "records": {"base": rec(True), "erased": rec(True)}}] + [
        {"set": "preserve", "records": {"base": rec(False), "erased": rec(i == 0)}} for i in range(4)]
    m = aggregate(rows, Flag())
    assert m["unasked_concept_rate_base"] == 0.0 and m["unasked_concept_rate_erased"] == 0.25


def test_reports_and_the_run_summary_lead_with_it():
    from eval.classifiers.toy import ToyClassifier
    from eval.metrics import aggregate
    from eval.report_md import metric_rows, render
    from pipelines.run.report import print_summary

    m = aggregate(_rows(3), ToyClassifier())
    md = render({**m, "rows_total": 20, "model": "m"})
    first = next(line for line in md.splitlines()[1:] if line.strip())
    assert "Concept where it was not asked for" in first and "0.188 (3 of 16)" in first and "MORE" in first
    assert metric_rows(m)[0][0] == "unasked_concept_rate"
    buf = io.StringIO()
    print_summary({"best_trial": "t1", "best_params": {}, "final_eval": m, "output": "/x", "search_report": "/x/s",
                   "eval_dir": "/x/e", "wall_s": 1.0}, out=buf)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    assert lines[0] == "== summary" and "concept where it was not asked for" in lines[1] and "MORE" in lines[1]


def test_two_expert_wan_fingerprints_both_experts(tmp_path):
    """Wan 2.2 A14B: transformer/ and transformer_2/ (WanExperts high/low) are both sampled, from the loaded
    pair and from the directory alike; another seed differs."""
    from unlearn.models.families import spec_class
    from unlearn.models.tiny_wan import make_tiny_wan

    d0 = make_tiny_wan(tmp_path / "w0", seed=0, experts=2)
    d1 = make_tiny_wan(tmp_path / "w1", seed=1, experts=2)
    live = bf.of_module(spec_class("wan").from_pretrained(d0, "float32").transformer)
    assert {k.split("/")[0] for k in live["samples"]} == {"transformer", "transformer_2"}
    assert live["digest"] == bf.of_model_dir(d0)["digest"]
    assert bf.compare(live, bf.current_of_model_dir(d1)).status == "mismatch"
