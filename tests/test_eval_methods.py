"""Methods compared in one harness (`method:` in the eval config, eval.methods) on the tiny CogVideoX with
the real pipeline: none / eraser / negprompt / safree through run_eval on the same prompts and seeds; what
reaches the pipeline call; SAFREE's projection; config errors through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.config import EvalConfig
from pipelines.cli import entry as cli
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "prompts"
TINY_CFG = REPO / "configs" / "eval" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_model():
    from unlearn.models.registry import resolve_model_path

    return resolve_model_path("builtin:tiny")


@pytest.fixture(scope="module")
def eraser_dir(tiny_model, tmp_path_factory):
    from unlearn.eraser import EraserMeta, EraserSet, save_eraser

    tcfg = json.loads((tiny_model / "transformer" / "config.json").read_text())
    n = tcfg["num_layers"]
    es = EraserSet(EraserMeta(hidden_size=tcfg["num_attention_heads"] * tcfg["attention_head_dim"], rank=2,
                              num_blocks=n, block_indices=list(range(n)), base_model=str(tiny_model)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in es.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return save_eraser(es, tmp_path_factory.mktemp("eraser") / "eraser")


def make_cfg(tiny_model, **sections) -> EvalConfig:
    data = {
        "model": {"path": str(tiny_model), "dtype": "float32"},
        "prompts": {"path": str(EXAMPLES / "nudity_example.csv"), "limit": 2},
        "preserve": {"path": str(EXAMPLES / "preserve_example.csv"), "limit": 1},
        "generation": {"num_inference_steps": 2, "num_frames": 9, "height": 32, "width": 32, "scheduler": "ddim",
                       "vae_tiling": False, "vae_slicing": False, "use_dynamic_cfg": False},
        "classifier": {"name": "nudenet", "nudenet": {"frames": 1}},
        "output": {"grid_rows": 0, "save_gifs": False},
        "runtime": {"num_actors": 0, "scorer": "inline", "progress": False},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return EvalConfig.model_validate(data)


class PipelineSpy:
    """Records the text side of every pipeline call (the real call still runs)."""

    def __init__(self, monkeypatch):
        from diffusers import CogVideoXPipeline

        self.calls: list[dict] = []
        real = CogVideoXPipeline.__call__

        def spy(pipe, *args, **kwargs):
            embeds = kwargs.get("prompt_embeds")
            self.calls.append({"prompt": kwargs.get("prompt"), "negative_prompt": kwargs.get("negative_prompt"),
                               "prompt_embeds": None if embeds is None else embeds.detach().clone()})
            return real(pipe, *args, **kwargs)

        monkeypatch.setattr(CogVideoXPipeline, "__call__", spy)


def videos(out: Path, which: str) -> dict[str, np.ndarray]:
    from eval.generate import read_video

    rows = [json.loads(p.read_text()) for p in sorted((out / "rows").glob("*.json"))]
    return {r["id"]: read_video(out / r["files"][which]["video"]) for r in rows if r["files"][which]}


@pytest.fixture(scope="module")
def runs(tiny_model, eraser_dir, tmp_path_factory):
    """One run per method on the same rows and seeds; each records the pipeline calls it made."""
    from eval.runner import run_eval

    root = tmp_path_factory.mktemp("methods")
    cases = {
        "none": make_cfg(tiny_model, method={"name": "none"}),
        "eraser": make_cfg(tiny_model, eraser=str(eraser_dir)),
        "negprompt": make_cfg(tiny_model, method={"name": "negprompt"}),
        "safree": make_cfg(tiny_model, method={"name": "safree", "words": ["naked", "nude body"],
                                               "safree": {"negative_prompt": False, "alpha": 0.0}}),
    }
    out = {}
    for name, cfg in cases.items():
        mp = pytest.MonkeyPatch()
        # an empty embedding cache: the pipeline encodes the text itself, as this module checks (a session cache a
        # search filled would serve the prompts and the concept words instead: tests/test_eval_text_cache.py)
        mp.setenv("T2VU_CACHE", str(root / "cache"))
        try:
            spy = PipelineSpy(mp)
            summary = run_eval(cfg, root / name)
        finally:
            mp.undo()
        out[name] = {"summary": summary, "dir": root / name, "calls": spy.calls, "cfg": cfg}
    return out


def test_every_method_runs_and_is_recorded(runs):
    for name, run in runs.items():
        s = run["summary"]
        assert s["method"]["name"] == name and s["rows_total"] == 3
        saved = json.loads((run["dir"] / "summary.json").read_text())
        assert saved["method"] == s["method"]
        assert json.loads((run["dir"] / "eval_config.json").read_text())["method"]["name"] == name
        rows = [json.loads(p.read_text()) for p in (run["dir"] / "rows").glob("*.json")]
        assert all((r["files"]["erased"] is not None) == (name != "none") for r in rows)
        assert all(("method" in r) == (name != "none") for r in rows)
    assert runs["negprompt"]["summary"]["method"]["options"]["words"] == ["naked body"]  # the rows' concept
    assert runs["eraser"]["summary"]["method"]["options"]["eraser"].endswith("eraser")
    notes = runs["safree"]["summary"]["notes"]
    assert any("re-attention" in n and "not implemented" in n for n in notes)
    report = (runs["safree"]["dir"] / "report.md").read_text()
    assert "not implemented" in report and "- method: safree (" in report
    assert len({r["summary"]["fingerprint"] for r in runs.values()}) == 4  # the method is in the fingerprint


def test_base_videos_are_the_same_in_every_run_and_none_is_them(runs):
    base = videos(runs["none"]["dir"], "base")
    assert len(base) == 3 and not videos(runs["none"]["dir"], "erased")
    for name in ("eraser", "negprompt", "safree"):
        other = videos(runs[name]["dir"], "base")
        assert other.keys() == base.keys()
        for k in base:
            np.testing.assert_array_equal(other[k], base[k])
    assert [c["negative_prompt"] for c in runs["none"]["calls"]] == [None] * 3


def test_negprompt_passes_the_words_and_changes_the_video(runs):
    calls = runs["negprompt"]["calls"]
    assert len(calls) == 6  # base, method for each of 3 rows
    assert [c["negative_prompt"] for c in calls] == [None, "naked body"] * 3
    assert all(c["prompt"] is not None for c in calls)
    base, erased = videos(runs["negprompt"]["dir"], "base"), videos(runs["negprompt"]["dir"], "erased")
    assert all(np.abs(base[k].astype(int) - erased[k].astype(int)).max() > 0 for k in base)
    assert runs["negprompt"]["summary"].get("psnr_preserve") is not None  # paired metrics on the preserve set


def test_safree_generates_from_projected_embeddings(runs, tiny_model):
    from eval.generate import load_eval_pipeline
    from unlearn.models.families import spec_class

    run = runs["safree"]
    calls = run["calls"]
    method_calls = [c for c in calls if c["prompt_embeds"] is not None]
    assert len(method_calls) == 3 and all(c["prompt"] is None and c["negative_prompt"] is None for c in method_calls)
    rows = [json.loads(p.read_text()) for p in sorted((run["dir"] / "rows").glob("*.json"))]
    infos = {r["prompt"]: r["method"] for r in rows}
    assert all(i["name"] == "safree" and i["tokens"] > 1 for i in infos.values())
    assert sum(i["tokens_projected"] for i in infos.values()) >= 1
    spec = spec_class("cogvideox")
    pipe = load_eval_pipeline(tiny_model, "float32", "cpu", run["cfg"].generation)
    plain = [c for c in calls if c["prompt"] is not None]
    for base_call, call in zip(plain, method_calls):
        info = infos[base_call["prompt"]]
        ref = spec.encode_prompts(pipe.tokenizer, pipe.text_encoder, [base_call["prompt"]], call["prompt_embeds"].shape[1])
        keep = [i for i in range(ref.shape[1]) if i not in info["projected_positions"]]
        assert torch.equal(call["prompt_embeds"][0, keep], ref[0, keep].detach())
        for p in info["projected_positions"]:
            assert not torch.allclose(call["prompt_embeds"][0, p], ref[0, p])


# --- SAFREE's projection (unit) ---------------------------------------------------------------------

def test_projection_is_orthogonal_to_the_concept_for_selected_tokens_only():
    from eval.safree import project, project_selected, select_tokens

    g = torch.Generator().manual_seed(0)
    d = 24
    concept = torch.randn((3, d), generator=g, dtype=torch.float64)
    masked = torch.randn((6, d), generator=g, dtype=torch.float64)
    far = masked[2] - project(masked[2:3], concept)[0]
    masked[2] = masked[2] + 4.0 * far / far.norm() * masked.norm(dim=1).mean()  # removing token 2 leaves the concept
    selected, dist = select_tokens(masked, concept, alpha=0.01)
    assert selected.tolist() == [False, False, True, False, False, False]
    others = torch.cat([dist[:2], dist[3:]]).mean()
    assert dist[2] >= 1.01 * others

    tokens = torch.randn((10, d), generator=g, dtype=torch.float32)
    positions = [1, 2, 3, 4, 5, 6]
    sel = torch.tensor([False, True, False, False, True, False])
    new = project_selected(tokens, positions, sel, concept, masked)
    changed = [2, 5]
    for i in range(10):
        if i in changed:
            cos = (concept @ new[i].double()) / (concept.norm(dim=1) * new[i].double().norm())
            assert cos.abs().max() < 1e-5
            assert not torch.allclose(new[i], tokens[i])
        else:
            assert torch.equal(new[i], tokens[i])
    expected = project(tokens[changed].double(), masked)  # (I - P_C) P_I e
    expected = expected - project(expected, concept)
    torch.testing.assert_close(new[changed].double(), expected, atol=1e-5, rtol=1e-5)


def test_pooling_first_is_the_reference_and_mean_averages_the_prompt_tokens():
    from eval.safree import pooled

    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    assert torch.equal(pooled(x, [2, 3], "first"), x[:, 0])
    torch.testing.assert_close(pooled(x, [2, 3], "mean"), torch.stack([x[0, :2].mean(0), x[1, :3].mean(0)]))
    with pytest.raises(ValueError):
        pooled(x, [2, 3], "max")


@pytest.mark.parametrize("pooling", ["first", "mean"])
def test_safree_masking_encodes_the_pad_token_and_keeps_unselected_tokens(tiny_model, pooling):
    from eval.config import GenerationConfig
    from eval.generate import load_eval_pipeline
    from eval.safree import MaskingTokenizer, concept_pooled, safree_prompt_embeds, text_parts
    from unlearn.models.families import spec_class

    gen = GenerationConfig(num_inference_steps=1, num_frames=9, height=32, width=32, vae_tiling=False)
    pipe = load_eval_pipeline(tiny_model, "float32", "cpu", gen)
    spec, tok, enc, length = text_parts(pipe, tiny_model, gen)
    prompt = "a naked body lying on a sofa"
    ids = tok([prompt], padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    masked_ids = ids.clone()
    masked_ids[0, 1] = tok.pad_token_id
    with torch.no_grad():
        direct = enc(masked_ids)[0]
        via = spec.encode_prompts(MaskingTokenizer(tok, [1], tok.pad_token_id), enc, [prompt], length)
    assert torch.equal(direct, via)
    concept = concept_pooled(spec_class("cogvideox"), tok, enc, ["naked", "nudity"], length, pooling)
    embeds, info = safree_prompt_embeds(spec, tok, enc, prompt, concept, length, alpha=0.0, pooling=pooling)
    with torch.no_grad():
        ref = spec.encode_prompts(tok, enc, [prompt], length)
    assert embeds.shape == ref.shape and info["tokens"] >= 2
    for p in range(length):
        if p in info["projected_positions"]:
            assert (concept @ embeds[0, p].double()).abs().max() < 1e-4 * embeds[0, p].norm() * concept.norm(dim=1).max()
        else:
            assert torch.equal(embeds[0, p], ref[0, p])


# --- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sets, needle", [
    (["method.name=bogus"], "method.name"),
    (["method.name=eraser"], "method.name: eraser needs an eraser"),
    (["method.name=negprompt", "method.words=[]"], "method.words"),
    (["method.name=safree", "method.safree.alpha=-1"], "method.safree.alpha"),
    (["method.name=negprompt", "method.words=['x']", "generation.guidance_scale=1.0"], "guidance_scale"),
    (["method.name=safree", "method.safrea={}"], "method.safrea"),
])
def test_bad_method_config_is_one_line_exit_2(tmp_path, capsys, sets, needle):
    argv = ["eval", "-c", str(TINY_CFG), "-o", str(tmp_path / "ev")]
    for s in sets:
        argv += ["--set", s]
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and not (tmp_path / "ev" / "rows").exists()


def test_method_with_an_eraser_is_refused(tmp_path, capsys, eraser_dir):
    rc = cli.main(["eval", "-c", str(TINY_CFG), "-o", str(tmp_path / "ev"), "--set", f"eraser={eraser_dir}",
                   "--set", "method.name=negprompt"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "eraser: null" in err and len(err.splitlines()) == 1


def test_method_options_change_the_resume_fingerprint(tiny_model, tmp_path):
    from eval.planning import plan_eval

    a = plan_eval(make_cfg(tiny_model, method={"name": "safree", "safree": {"alpha": 0.01}}), tmp_path / "a")
    b = plan_eval(make_cfg(tiny_model, method={"name": "safree", "safree": {"alpha": 0.1}}), tmp_path / "b")
    c = plan_eval(make_cfg(tiny_model, method={"name": "negprompt", "words": ["nudity"]}), tmp_path / "c")
    assert len({a.fingerprint, b.fingerprint, c.fingerprint}) == 3
    assert c.method.options["negative_prompt"] == "nudity"
