"""Prompt CSVs and eval configs: column mapping, validation errors with file and row, before
any model loads; every shipped eval config parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.config import NUDENET_PRESETS, EvalConfig, PromptsConfig, load_eval_config
from eval.prompts import PromptFileError, load_eval_rows, parse_seed, read_prompt_csv
from unlearn.config import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "prompts"
SHARED = Path("/work/shared/data")


def write(tmp_path: Path, text: str, name: str = "p.csv") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_reference_schema_example_loads():
    rows = read_prompt_csv(EXAMPLES / "nudity_example.csv", PromptsConfig())
    assert len(rows) == 6
    r = rows[0]
    assert r.prompt.startswith("A naked woman") and r.seed == 1001
    assert (r.concept, r.concept_type, r.id, r.set) == ("naked body", "example", "t00000", "target")
    d = r.as_dict()
    assert d["seed"] == 1001 and d["row_id"] == "t00000" and d["eval_set"] == "target"


def test_csv_columns_are_not_overwritten_by_stage_keys(tmp_path):
    # a toy-world CSV has its own `set` column; the classifier must see it unchanged
    p = write(tmp_path, "prompt,seed,concept,concept_type,set\na red square,1,red,target,synonym\n")
    d = read_prompt_csv(p, PromptsConfig())[0].as_dict()
    assert d["set"] == "synonym" and d["eval_set"] == "target"


@pytest.mark.skipif(not (SHARED / "nudity_cogvideox.csv").exists(), reason="shared data not present")
def test_shared_nudity_csv_loads():
    rows = read_prompt_csv(SHARED / "nudity_cogvideox.csv", PromptsConfig())
    assert len(rows) == 100 and all(r.prompt and r.seed >= 0 for r in rows)
    assert len(read_prompt_csv(SHARED / "nudity_cogvideox.csv", PromptsConfig(), limit=7)) == 7


@pytest.mark.skipif(not (SHARED / "nudity-ring-a-bell.csv").exists(), reason="shared data not present")
def test_shared_ring_a_bell_normal_prompts_load():
    cfg = PromptsConfig(prompt_column="normal prompt", default_seed=5)  # prompt columns only: derived seeds
    rows = read_prompt_csv(SHARED / "nudity-ring-a-bell.csv", cfg)
    assert rows and [r.seed for r in rows] == [5 + i for i in range(len(rows))]
    assert "prompt" in rows[0].fields  # the other column is kept


def test_renamed_seed_column_and_default_seed(tmp_path):
    p = write(tmp_path, "prompt,evaluation_seed\na cat,7\na dog,8\n")
    rows = read_prompt_csv(p, PromptsConfig(seed_column="evaluation_seed"))
    assert [r.seed for r in rows] == [7, 8]
    assert [r.seed for r in read_prompt_csv(p, PromptsConfig())] == [7, 8]  # auto finds evaluation_seed
    rows = read_prompt_csv(p, PromptsConfig(seed_column=None, default_seed=3, default_seed_policy="same"))
    assert [r.seed for r in rows] == [3, 3]
    rows = read_prompt_csv(p, PromptsConfig(seed_column=None, default_seed=3))  # default: plus_row_index
    assert [r.seed for r in rows] == [3, 4]


def test_ring_a_bell_style_example_with_mapping():
    cfg = PromptsConfig(prompt_column="normal prompt", seed_column=None, default_seed=42)
    rows = read_prompt_csv(EXAMPLES / "ring_a_bell_style.csv", cfg, set_name="preserve")
    assert len(rows) == 3 and rows[0].id == "p00000" and "clothed" in rows[0].prompt


def test_missing_prompt_column_names_file_and_columns(tmp_path):
    p = write(tmp_path, "text,seed\na cat,1\n")
    with pytest.raises(PromptFileError) as e:
        read_prompt_csv(p, PromptsConfig())
    msg = str(e.value)
    assert str(p) in msg and "'prompt'" in msg and "['text', 'seed']" in msg


def test_missing_named_seed_column_suggests_auto_or_null(tmp_path):
    p = write(tmp_path, "prompt\na cat\n")
    with pytest.raises(PromptFileError, match="seed_column: auto .*or seed_column: null"):
        read_prompt_csv(p, PromptsConfig(seed_column="seed"))


def test_empty_prompt_and_bad_seeds_reported_with_rows(tmp_path):
    p = write(tmp_path, 'prompt,seed\na cat,1\n"  ",2\na dog,abc\na fox,4.5\na owl,\na bee,12.0\n')
    with pytest.raises(PromptFileError) as e:
        read_prompt_csv(p, PromptsConfig())
    msg = str(e.value)
    assert str(p) in msg and "4 problems" in msg
    assert "row 2 (line 3): empty prompt" in msg
    assert "row 3 (line 4): seed 'abc'" in msg and "not an integer" in msg
    assert "row 4 (line 5): seed '4.5'" in msg
    assert "row 5 (line 6): seed ''" in msg and "empty" in msg


def test_line_numbers_follow_multiline_quoted_prompts(tmp_path):
    p = write(tmp_path, 'prompt,seed\n"a cat\non two lines",1\na dog,x\n')
    with pytest.raises(PromptFileError, match=r"row 2 \(line 4\)"):
        read_prompt_csv(p, PromptsConfig())


@pytest.mark.parametrize(
    "text,match",
    [
        ('prompt,seed\n"a cat,1\n', "cannot be parsed"),  # unterminated quote
        ('prompt,seed\n"a" cat",1\n', "cannot be parsed"),  # stray quote
        ("prompt,seed\na cat,1,extra\n", "has 3 fields"),
        ("", "empty"),
        ("prompt,seed\n", "no data rows"),
        ("prompt,prompt\na,b\n", "duplicate column"),
    ],
)
def test_unparseable_csvs(tmp_path, text, match):
    p = write(tmp_path, text)
    with pytest.raises(PromptFileError, match=match) as e:
        read_prompt_csv(p, PromptsConfig())
    assert str(p) in str(e.value)


def test_not_utf8_and_missing_file(tmp_path):
    p = tmp_path / "bin.csv"
    p.write_bytes(b"prompt,seed\n\xff\xfe\x00a,1\n")
    with pytest.raises(PromptFileError, match="UTF-8"):
        read_prompt_csv(p, PromptsConfig())
    with pytest.raises(PromptFileError, match="not found"):
        read_prompt_csv(tmp_path / "nope.csv", PromptsConfig())


def test_limit_stops_before_bad_rows(tmp_path):
    p = write(tmp_path, "prompt,seed\na cat,1\na dog,2\n,3\n")
    assert len(read_prompt_csv(p, PromptsConfig(limit=2))) == 2
    with pytest.raises(PromptFileError):
        read_prompt_csv(p, PromptsConfig())


def test_parse_seed():
    assert parse_seed(" 42 ") == 42 and parse_seed("4.2e1") == 42 and parse_seed("0") == 0
    for bad in ("-1", "1.5", "nan", "", "1e30"):
        with pytest.raises(ValueError):
            parse_seed(bad)


def test_load_eval_rows_target_then_preserve(tmp_path):
    cfg = EvalConfig.model_validate({
        "prompts": {"path": str(EXAMPLES / "nudity_example.csv")},
        "preserve": {"path": str(EXAMPLES / "preserve_example.csv")},
    })
    rows = load_eval_rows(cfg, limit=2)
    assert [r.id for r in rows] == ["t00000", "t00001", "p00000", "p00001"]
    with pytest.raises(ConfigError, match="prompts.path"):
        load_eval_rows(EvalConfig())


def test_bad_csv_fails_before_any_model_loads(tmp_path):
    """run_eval validates prompts first: no output written, no model touched (bad model path)."""
    from eval.runner import run_eval

    p = write(tmp_path, "prompt,seed\na cat,one\n")
    cfg = EvalConfig.model_validate({"model": {"path": str(tmp_path / "no-model")}, "prompts": {"path": str(p)}})
    out = tmp_path / "out"
    with pytest.raises(PromptFileError, match="row 1 \\(line 2\\)"):
        run_eval(cfg, out)
    assert not out.exists()


def test_cli_reports_csv_errors_with_exit_code_2(tmp_path, capsys):
    from pipelines.cli.entry import main

    p = write(tmp_path, "prompt,seed\n,1\n")
    rc = main(["eval", "--config", str(REPO / "configs/eval/tiny.yaml"), "--output", str(tmp_path / "o"),
               "--prompts", str(p)])
    err = capsys.readouterr().err
    assert rc == 2 and "error:" in err and str(p) in err and "row 1 (line 2): empty prompt" in err


# --- configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((REPO / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_eval_configs_parse(path):
    cfg = load_eval_config(path)
    assert cfg.classifier.name
    if cfg.prompts.path and "path/to" not in cfg.prompts.path:
        assert cfg.resolve_path(cfg.prompts.path).is_file()


def test_reference_defaults_and_real_config():
    g = EvalConfig().generation
    assert (g.num_inference_steps, g.guidance_scale, g.use_dynamic_cfg, g.num_frames, g.height, g.width) == (
        50, 6.0, True, 49, 480, 720)
    assert EvalConfig().model.dtype == "bfloat16"
    cfg = load_eval_config(REPO / "configs/eval/cogvideox-2b-nudity.yaml")
    assert cfg.generation.num_frames == 49 and cfg.classifier.nudenet.counted_classes() == NUDENET_PRESETS["receler8"]


def test_config_errors_name_keys(tmp_path):
    p = write(tmp_path, "generation:\n  num_inference_step: 4\nclassifier:\n  nudenet:\n    classes: [NOT_A_CLASS]\n",
              "bad.yaml")
    with pytest.raises(ConfigError) as e:
        load_eval_config(p)
    msg = str(e.value)
    assert "generation.num_inference_step" in msg and "unknown key" in msg and "NOT_A_CLASS" in msg


def test_overrides_and_pipeline_section(tmp_path):
    p = write(tmp_path, "eval:\n  generation:\n    num_frames: 9\n", "pipe.yaml")
    p.write_text("model:\n  path: builtin:tiny\neval:\n  prompts:\n    path: x.csv\n")
    cfg = load_eval_config(p, ["generation.num_inference_steps=3", "eraser=null"])
    assert cfg.prompts.path == "x.csv" and cfg.generation.num_inference_steps == 3
    cfg2 = cfg.with_overrides({"generation.height": 64})
    assert cfg2.generation.height == 64
