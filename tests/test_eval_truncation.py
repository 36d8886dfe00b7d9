"""Long prompts are cut by the text encoder: counted with the pipeline's own tokenizer per row,
recorded in results.csv, summary.json and report.md, warned about before generation, and refused
with `checks.on_truncation: error`. The tiny model's limit is 16 tokens (the real CogVideoX: 226)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from eval.config import EvalConfig, GenerationConfig
from eval.planning import plan_eval
from eval.runner import run_eval
from unlearn.config import ConfigError

GEN = {"num_inference_steps": 2, "num_frames": 9, "height": 32, "width": 32, "scheduler": "ddim",
       "vae_tiling": False, "vae_slicing": False}
SHORT = "a naked body"  # 4 tokens with </s>
# LONG_A / LONG_B share the first 16 tokens and differ after them
HEAD = " ".join(["a naked body"] * 5)  # 15 words: 16 tokens with </s>, exactly the limit
LONG_A, LONG_B = HEAD + " a beach at night", HEAD + " the moon in the sky"


@pytest.fixture(scope="module")
def tiny_model():
    from unlearn.models.registry import resolve_model_path

    return resolve_model_path("builtin:tiny")


def prompts_csv(tmp_path: Path, prompts: list[str]) -> Path:
    p = tmp_path / "p.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "seed"])
        w.writerows([pr, 7] for pr in prompts)
    return p


def cfg_for(tiny_model, csv_path, **checks) -> EvalConfig:
    return EvalConfig.model_validate({
        "model": {"path": str(tiny_model), "dtype": "float32"},
        "prompts": {"path": str(csv_path)},
        "generation": GEN,
        "classifier": {"name": "nudenet", "nudenet": {"frames": 1}},
        "output": {"grid_rows": 0, "save_videos": False, "save_gifs": False},
        "runtime": {"num_actors": 0, "scorer": "inline", "progress": False},
        "checks": checks,
    })


def test_words_past_the_limit_change_nothing(tiny_model):
    """Why the count matters: the pipeline gives byte-identical videos for prompts that differ
    only past the limit (and the library's own warning is silenced)."""
    from eval.generate import generate_video, load_eval_pipeline, prompt_token_counts

    gen = GenerationConfig(**GEN)
    counts, limit = prompt_token_counts(tiny_model, [SHORT, HEAD, LONG_A, LONG_B], gen)
    assert limit == 16 and counts[:2] == [4, 16] and min(counts[2:]) > 16
    pipe = load_eval_pipeline(tiny_model, "float32", "cpu", gen)
    np.testing.assert_array_equal(generate_video(pipe, LONG_A, 7, gen), generate_video(pipe, LONG_B, 7, gen))
    assert prompt_token_counts(tiny_model, [LONG_A], GenerationConfig(**GEN, max_sequence_length=64))[1] == 64


def test_truncated_rows_are_counted_everywhere(tiny_model, tmp_path, caplog):
    csv_path = prompts_csv(tmp_path, [SHORT, LONG_A, HEAD])
    cfg = cfg_for(tiny_model, csv_path)
    with caplog.at_level(logging.WARNING, logger="eval.planning"):
        plan = plan_eval(cfg, tmp_path / "o")
    assert [r.prompt_tokens for r in plan.rows][0] == 4 and [r.truncated for r in plan.rows] == [False, True, False]
    over = plan.rows[1].prompt_tokens - 16
    warned = [r.getMessage() for r in caplog.records if "longer than the text encoder" in r.getMessage()]
    assert len(warned) == 1 and f"1 of 3 prompts are longer than the text encoder's 16 tokens (by up to {over}" in warned[0]
    assert f"{csv_path} rows 2 ({16 + over} tokens)" in warned[0]

    s = run_eval(cfg, tmp_path / "o")
    assert (s["rows_truncated"], s["truncated_tokens_max"], s["text_token_limit"]) == (1, over, 16)
    assert any("longer than the text encoder" in n for n in s["notes"])
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["rows_truncated"] == 1
    with open(tmp_path / "o" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["prompt_tokens"], r["truncated"]) for r in rows] == [("4", "False"), (str(16 + over), "True"), ("16", "False")]
    report = (tmp_path / "o" / "report.md").read_text()
    assert f"- truncated prompts: 1 of 3 longer than the text encoder's 16 tokens (by up to {over} tokens" in report


def test_on_truncation_error_refuses_before_anything_is_written(tiny_model, tmp_path, capsys):
    import yaml

    from pipelines.cli.entry import main

    csv_path = prompts_csv(tmp_path, [SHORT, LONG_A, LONG_B])
    cfg = cfg_for(tiny_model, csv_path, on_truncation="error")
    out = tmp_path / "o"
    with pytest.raises(ConfigError, match=r"checks.on_truncation: error: 2 of 3 prompts .* 16 tokens: .*rows 2 \("):
        run_eval(cfg, out)
    assert not out.exists()
    cfg_path = tmp_path / "e.yaml"
    cfg_path.write_text(yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k != "config_dir"}))
    rc = main(["eval", "--config", str(cfg_path), "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "error: checks.on_truncation: error: 2 of 3 prompts" in err and not out.exists()
    # a prompt of exactly the limit is not cut
    assert plan_eval(cfg_for(tiny_model, prompts_csv(tmp_path, [HEAD]), on_truncation="error"), out).inputs[
        "rows_truncated"] == 0
