"""Knobs that were two names for one thing are one key now; the old names are read for one release with a
one-line warning naming the new key, and refused when they contradict it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipelines.cli.entry import main
from pipelines.config.pipeline import PipelineConfig, PipelineRunConfig, load_pipeline_config
from pipelines.config.search import EvalVariant, ObjectiveConfig
from unlearn.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TOY = str(ROOT / "configs" / "toy.yaml")


def test_old_checkpoint_and_limit_keys_read_as_the_new_ones_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="t2vu.config"):
        cfg = load_pipeline_config(TOY, ["distributed.checkpoint_every=7", "run.eval_limit=3"])
    assert cfg.train.checkpoint_every == 7 and cfg.run.limit == 3
    warned = [r.getMessage() for r in caplog.records if r.name == "t2vu.config"]
    assert len(warned) == 2 and all("\n" not in w for w in warned)
    # configs/toy.yaml sets train.checkpoint_every: 60; the old distributed override won where it applied
    assert any("distributed.checkpoint_every is deprecated and read as train.checkpoint_every, replacing "
               "train.checkpoint_every: 60" in w for w in warned)
    assert any("run.eval_limit is deprecated and read as run.limit" in w for w in warned)
    # the resolved config carries only the new names: a trial re-validating it warns no more
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="t2vu.config"):
        again = cfg.with_overrides({"train.steps": 5})
    assert again.train.checkpoint_every == 7 and not caplog.records
    assert "checkpoint_every" not in again.to_dict()["distributed"] and "eval_limit" not in again.to_dict()["run"]


def test_old_and_new_key_disagreeing_is_refused_in_one_line(capsys):
    with pytest.raises(ConfigError, match=r"run.eval_limit \(3\) and run.limit \(4\) are both set"):
        load_pipeline_config(TOY, ["run.eval_limit=3", "run.limit=4"])
    rc = main(["config", "show", TOY, "--set", "run.eval_limit=3", "--set", "run.limit=4"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().count("\n") == 0 and "remove run.eval_limit" in err
    # the same value twice is the same knob: read, not refused
    assert load_pipeline_config(TOY, ["run.eval_limit=4", "run.limit=4"]).run.limit == 4


def test_final_eval_keys_have_one_definition_for_search_and_run():
    assert issubclass(ObjectiveConfig, EvalVariant) and issubclass(PipelineRunConfig, EvalVariant)
    for key in ("eval_overrides", "toy_prompts", "limit"):
        assert ObjectiveConfig.model_fields[key].description == PipelineRunConfig.model_fields[key].description
    assert "checkpoint_every" not in PipelineConfig.model_fields["distributed"].annotation.model_fields
    cfg = load_pipeline_config(TOY)
    assert cfg.run.toy_prompts.n == 32 and cfg.search.objective.toy_prompts.n == 24  # configs/toy.yaml's two evals
