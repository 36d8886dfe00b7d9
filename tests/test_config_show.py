"""`t2vu config show`: a shipped config as the tools resolve it, each key with the schema's description."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from pipelines.cli.entry import main
from pipelines.config.pipeline import load_pipeline_config

ROOT = Path(__file__).resolve().parent.parent
TOY = str(ROOT / "configs" / "toy.yaml")


def show(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["config", "show", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_show_prints_resolved_values_with_descriptions_and_set_applied(capsys):
    rc, out, _ = show(capsys, TOY, "--set", "train.steps=7", "--set", "loss.eta=2.5")
    assert rc == 0
    lines = out.splitlines()
    steps = next(ln for ln in lines if ln.strip().startswith("steps:"))
    assert steps.split("#")[0].split() == ["steps:", "7"] and "# Optimiser steps (reference: 500)." in steps
    assert any(ln.split("#")[0].split() == ["eta:", "2.5"] and "Negative guidance strength" in ln for ln in lines)
    # a default the file does not set is filled in, with its description
    assert any(ln.strip().startswith("weight_decay: 0.0") and "AdamW weight decay" in ln for ln in lines)
    assert any(ln.startswith("search:") and "Ray Tune" in ln for ln in lines)
    # the human form is YAML: read back it is the resolved config itself
    resolved = load_pipeline_config(TOY, ["train.steps=7", "loss.eta=2.5"]).model_dump(mode="json")
    assert yaml.safe_load(out) == resolved


def test_show_json_lists_every_key_with_value_and_description(capsys):
    rc, out, _ = show(capsys, TOY, "--json", "--set", "search.num_samples=3")
    assert rc == 0
    data = json.loads(out)
    assert data["kind"] == "pipeline" and data["overrides"] == ["search.num_samples=3"]
    keys = {k["key"]: k for k in data["keys"]}
    assert keys["search.num_samples"]["value"] == 3 and keys["search.num_samples"]["description"] == "Trials sampled."
    assert keys["model.path"]["value"] == "builtin:toy"
    assert keys["train"]["section"] and keys["train.lr"]["description"].startswith("AdamW learning rate")
    assert all(k["description"] for k in data["keys"]), [k["key"] for k in data["keys"] if not k["description"]]
    assert data["resolved"]["search"]["num_samples"] == 3


def test_show_reads_eval_and_attack_configs_by_their_keys(capsys):
    rc, out, _ = show(capsys, str(ROOT / "configs" / "eval" / "toy.yaml"), "--json")
    assert rc == 0 and json.loads(out)["kind"] == "eval"
    assert "generation.num_inference_steps" in {k["key"] for k in json.loads(out)["keys"]}
    rc, out, _ = show(capsys, str(ROOT / "configs" / "attack" / "toy.yaml"))
    assert rc == 0 and "resolved attack config" in out.splitlines()[0]


def test_show_bad_key_or_value_is_one_line_exit_2(capsys):
    rc, out, err = show(capsys, TOY, "--set", "train.stepz=3")
    assert rc == 2 and out == ""
    assert err.strip().count("\n") == 0 and "train.stepz: unknown key" in err
    rc, _, err = show(capsys, TOY, "--set", "train.steps=0")
    assert rc == 2 and "train.steps" in err and err.strip().count("\n") == 0
