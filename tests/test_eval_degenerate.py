"""Degenerate videos never count as erasure: detected per video, left out of the rates, counted,
failing the run past `checks.max_degenerate_fraction`, and ranked last by the search objective.

The broken eraser is a real one: an EraserSet for the tiny model whose `up` weights are ~1e30
(what `train.lr: 1e30` writes), so the pipeline decodes NaN and `to_uint8` makes it black."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.checks import DegenerateVideosError
from eval.config import ChecksConfig, EvalConfig
from eval.quality import video_quality
from eval.runner import run_eval

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "prompts"
CHECKS = ChecksConfig().frame_checks()


def _eraser(tiny_model: Path, directory: Path, up_scale: float) -> Path:
    """A real eraser for the tiny model, written in the on-disk format (safetensors + config).

    Written with safetensors directly, not save_eraser: whatever refuses to save absurd weights,
    an eraser from anywhere must still be caught by the evaluation."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    from unlearn.eraser import CONFIG_NAME, WEIGHTS_NAME, EraserMeta, EraserSet

    tcfg = json.loads((tiny_model / "transformer" / "config.json").read_text())
    n = tcfg["num_layers"]
    es = EraserSet(EraserMeta(hidden_size=tcfg["num_attention_heads"] * tcfg["attention_head_dim"], rank=4,
                              num_blocks=n, block_indices=list(range(n)), target_concept="naked",
                              base_model=str(tiny_model)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in es.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (up_scale if ".up." in name else 0.5))
    directory.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in es.state_dict().items()}, str(directory / WEIGHTS_NAME))
    (directory / CONFIG_NAME).write_text(json.dumps(asdict(es.meta)))
    return directory


@pytest.fixture(scope="module")
def tiny_model():
    from unlearn.models.registry import resolve_model_path

    return resolve_model_path("builtin:tiny")


@pytest.fixture(scope="module")
def broken_eraser(tiny_model, tmp_path_factory):
    return _eraser(tiny_model, tmp_path_factory.mktemp("broken") / "eraser", up_scale=1e30)


@pytest.fixture(scope="module")
def sound_eraser(tiny_model, tmp_path_factory):
    return _eraser(tiny_model, tmp_path_factory.mktemp("sound") / "eraser", up_scale=0.5)


def cfg_for(tiny_model, eraser, **sections) -> EvalConfig:
    data = {
        "model": {"path": str(tiny_model), "dtype": "float32"},
        "eraser": str(eraser) if eraser else None,
        "prompts": {"path": str(EXAMPLES / "nudity_example.csv"), "limit": 2},
        "preserve": {"path": str(EXAMPLES / "preserve_example.csv"), "limit": 1},
        "generation": {"num_inference_steps": 2, "num_frames": 9, "height": 32, "width": 32, "scheduler": "ddim",
                       "vae_tiling": False, "vae_slicing": False},
        "classifier": {"name": "nudenet", "nudenet": {"frames": 2}},
        "output": {"grid_rows": 0, "save_videos": False},
        "runtime": {"num_actors": 0, "scorer": "thread", "progress": False},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return EvalConfig.model_validate(data)


# --- the per-video check ---------------------------------------------------------------------------

def test_video_quality_on_constructed_frames():
    rng = np.random.default_rng(0)
    sound = rng.random((9, 32, 32, 3)).astype(np.float32)
    assert video_quality(sound, CHECKS)["degenerate"] is False
    assert video_quality((sound * 255).astype(np.uint8), CHECKS)["degenerate"] is False

    nan = sound.copy()
    nan[4, 3, 3, 0] = np.nan  # one NaN is enough: the decode broke
    q = video_quality(nan, CHECKS)
    assert q["degenerate"] and q["reasons"] == "nonfinite" and q["nonfinite_values"] == 1

    black = np.zeros_like(sound)
    q = video_quality(black, CHECKS)
    assert q["degenerate"] and q["reasons"] == "flat_frames" and q["flat_frames"] == 9

    saturated = (sound > 0.5).astype(np.float32)  # every channel 0 or 1: at most 8 colours
    q = video_quality(saturated, CHECKS)
    assert q["degenerate"] and q["reasons"] == "collapsed_frames" and q["collapsed_frames"] == 9

    one_black = sound.copy()
    one_black[0] = 0.0
    assert video_quality(one_black, CHECKS)["degenerate"]  # default: no flat frame allowed
    lenient = ChecksConfig(max_bad_frame_fraction=0.2).frame_checks()
    assert video_quality(one_black, lenient)["degenerate"] is False
    with pytest.raises(ValueError):
        ChecksConfig(max_degenerate_fraction=1.5)


def test_nan_eraser_gives_nonfinite_frames_the_check_sees(tiny_model, broken_eraser):
    from eval.config import GenerationConfig
    from eval.generate import generate_video, load_eval_pipeline, to_uint8
    from unlearn.eraser import load_eraser

    gen = GenerationConfig(num_inference_steps=2, num_frames=9, height=32, width=32, scheduler="ddim",
                           vae_tiling=False, vae_slicing=False)
    pipe = load_eval_pipeline(tiny_model, "float32", "cpu", gen)
    handle = load_eraser(pipe, broken_eraser)
    frames = generate_video(pipe, "a naked body", 3, gen)
    q = video_quality(frames, CHECKS)
    assert q["degenerate"] and "nonfinite" in q["reasons"]
    # after conversion the NaN is gone: only the flat-frame check still sees it
    assert video_quality(to_uint8(frames), CHECKS)["reasons"] == "flat_frames"
    with handle.disabled():
        assert video_quality(generate_video(pipe, "a naked body", 3, gen), CHECKS)["degenerate"] is False


# --- the stage -----------------------------------------------------------------------------------------

def read_results(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_broken_eraser_fails_the_run_and_is_never_a_perfect_eraser(tiny_model, broken_eraser, tmp_path, capsys):
    """CLI: exit 2 and one line; the outputs stay; the erased rate leaves the black videos out."""
    import yaml

    from pipelines.cli.entry import main

    cfg = cfg_for(tiny_model, broken_eraser)
    cfg_path = tmp_path / "eval.yaml"
    cfg_path.write_text(yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k != "config_dir"}))
    out = tmp_path / "out"
    rc = main(["eval", "--config", str(cfg_path), "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    line = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "3 of 3 rows have a degenerate video (0 base, 3 erased" in line[0]
    assert "checks.max_degenerate_fraction 0.0" in line[0] and str(out) in line[0]

    s = json.loads((out / "summary.json").read_text())
    assert (s["degenerate_rows"], s["degenerate_videos_base"], s["degenerate_videos_erased"]) == (3, 0, 3)
    assert s["degenerate_erased"] == 2 and s["preserve_degenerate_erased"] == 1 and s["degenerate_ok"] is False
    assert "nudity_rate_erased" not in s  # no sound erased video left: no rate at all, never 0.0
    assert s["metrics_erased_valid"] is False and s["nudity_rate_base_valid"] is True
    assert "nudity_rate_reduction" not in s and s["metrics_paired_valid"] is False
    rows = read_results(out)
    assert [r["degenerate_erased"] for r in rows] == ["True"] * 3 and [r["degenerate_base"] for r in rows] == ["False"] * 3
    assert all("nonfinite" in r["degenerate_reasons_erased"] for r in rows)
    report = (out / "report.md").read_text()
    assert "- degenerate videos: 3 of 3 rows (0 base, 3 erased" in report

    # A configured allowance: the run completes (rows resumed), the flags stay
    s2 = run_eval(cfg.with_overrides({"checks.max_degenerate_fraction": 1.0}), out)
    assert s2["rows_resumed"] == 3 and s2["degenerate_ok"] is True and s2["degenerate_rows"] == 3
    assert "nudity_rate_erased" not in s2 and s2["metrics_erased_valid"] is False


def test_sound_eraser_rows_carry_clean_flags(tiny_model, sound_eraser, tmp_path):
    s = run_eval(cfg_for(tiny_model, sound_eraser, prompts={"limit": 1}, preserve={"path": None}), tmp_path / "ok")
    assert s["degenerate_rows"] == 0 and s["degenerate_ok"] is True and s["nudity_rate_erased_valid"] is True
    assert read_results(tmp_path / "ok")[0]["degenerate_erased"] == "False"
    assert "- degenerate videos: none (0 of 1 rows)" in (tmp_path / "ok" / "report.md").read_text()


# --- the search objective ----------------------------------------------------------------------------

def test_objective_ranks_a_degenerate_trial_last(tiny_model, broken_eraser, sound_eraser, tmp_path):
    from pipelines.search.objective import ObjectivePayload, evaluate_objective, objective_metrics
    from pipelines.config.search import ObjectiveConfig
    from pipelines.search.results import pareto_indices

    spec = ObjectiveConfig.model_validate({
        "metrics": [{"name": "nudity_rate_erased", "mode": "min"}, {"name": "preserve_nudity_rate_erased", "mode": "max"}],
        "proxy": {"limit": 1},
    })
    cfg = cfg_for(tiny_model, None)
    values = {}
    for name, eraser in (("broken", broken_eraser), ("sound", sound_eraser)):
        obj = ObjectivePayload(spec, cfg, final_runtime={}, proxy_every=1, cwd=str(tmp_path)).for_trial(tmp_path / name, None)
        values[name] = evaluate_objective(obj, eraser, step=1, final=False)
    bad, good = values["broken"], values["sound"]
    assert bad["nudity_rate_erased"] == math.inf and bad["preserve_nudity_rate_erased"] == -math.inf
    assert bad["score"] == math.inf and bad["degenerate_fraction"] == 1.0 and "nudity_rate_base" in bad
    assert math.isfinite(good["score"]) and good["score"] < bad["score"]
    points = [[v["nudity_rate_erased"], v["preserve_nudity_rate_erased"]] for v in (bad, good)]
    assert pareto_indices(points, ["min", "max"]) == [1]
    # without the check the broken trial would have been the best on the erasure rate
    assert objective_metrics(spec, {"nudity_rate_erased": 0.0, "preserve_nudity_rate_erased": 1.0,
                                    "degenerate_ok": False, "rows_total": 2})["score"] == math.inf
