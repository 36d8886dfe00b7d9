"""The content gate as a config key (issue 25): `gate:` of the training config (its prompts default to the concept
section's; an empty default fails at load, not after training; no gate keeps every eraser digest as it was) and
`methods[].gate` of the attack config (inline or a YAML file; prompts required there)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from unlearn.config import ConfigError, EraserTrainingConfig, config_digest, validate

ROOT = Path(__file__).resolve().parent.parent


def test_training_gate_defaults_from_the_concept_and_keeps_digests():
    cfg = validate(EraserTrainingConfig, {"concept": {"anchors": ["clothed"]}, "gate": {"strength": 10}}, "t.yaml")
    filled = cfg.gate.filled(cfg.concept.target, cfg.concept.anchors, cfg.concept.prompts, cfg.concept.preserve)
    assert (filled.concept_prompt, filled.toward_prompts, filled.strength) == ("naked", ["clothed"], 10.0)
    assert filled.positive == cfg.concept.prompts and filled.negative == cfg.concept.preserve
    with pytest.raises(ConfigError, match="gate.toward_prompts is not set and concept.anchors"):
        validate(EraserTrainingConfig, {"gate": {}}, "t.yaml")  # the default anchors are empty: named at load
    validate(EraserTrainingConfig, {"gate": {"name": "none"}}, "t.yaml")  # no gate: nothing to default
    plain = EraserTrainingConfig()
    old = json.dumps({k: v for k, v in plain.model_dump(mode="json").items() if k not in ("gate", "bank")},
                     sort_keys=True)  # the digest before either key (no bank either: tests/test_bank_train.py)
    assert config_digest(plain) == hashlib.sha256(old.encode()).hexdigest()[:16], "no gate: the digest of before"
    assert config_digest(cfg) != config_digest(cfg.model_copy(update={"gate": None}))


def test_pipeline_config_carries_the_gate_to_training_and_overrides():
    from pipelines.config.pipeline import PipelineConfig

    cfg = PipelineConfig.model_validate({"concept": {"anchors": ["clothed"]}, "gate": {"threshold": -2}})
    assert cfg.method().gate == cfg.gate  # what t2vu train / the Ray driver / a Tune trial hand to training
    assert cfg.with_overrides({"gate.strength": 7.5}).method().gate.strength == 7.5
    with pytest.raises(ConfigError, match="gate.strength"):
        cfg.with_overrides({"gate.strength": 0})
    # one key of a section that is off does not switch it on: one line naming the section and the fix
    off = cfg.model_copy(update={"gate": None})
    with pytest.raises(ConfigError) as err:
        off.with_overrides({"gate.strength": 7.5})
    assert str(err.value) == ("Cannot set gate.strength: `gate:` is off (null) in this config; set the whole section "
                              "first (e.g. --set 'gate={}' for its defaults) or leave gate.strength out")


def test_attack_method_gate_inline_or_file(tmp_path):
    from eval.attacks.gating import gate_id, gate_of
    from pipelines.config.attack import load_attack_config

    cfg = load_attack_config(ROOT / "configs/attack/toy.yaml",
                             ["methods=[{name: eraser, eraser: e, gate: ../gates/toy.yaml}]"])
    g = gate_of(cfg, cfg.methods[0])  # relative to the attack config
    assert g.strength == 10.0 and g.toward_prompts == ["green", "blue"] and len(g.negative) == 44
    assert cfg.methods[0].method_section(["red"]).get("gate") is None  # eval's method section knows no gate
    inline = load_attack_config(ROOT / "configs/attack/toy.yaml", [
        "methods=[{name: eraser, eraser: e, gate: {concept_prompt: red, toward_prompts: [green], positive: [a red "
        "bar], negative: [a blue bar], strength: 5}}]"])
    g2 = gate_of(inline, inline.methods[0])
    assert g2.strength == 5.0 and gate_id(g2) != gate_id(g)
    for bad, msg in (("{name: eraser, eraser: e, gate: {strength: 3}}", "must be listed in an attack config"),
                     ("{name: none, gate: ../gates/toy.yaml}", "set it for name: eraser only")):
        with pytest.raises(ConfigError, match=msg):
            load_attack_config(ROOT / "configs/attack/toy.yaml", [f"methods=[{bad}]"])
    (tmp_path / "g.yaml").write_text("gate: {strength: 2}\n")
    missing = load_attack_config(ROOT / "configs/attack/toy.yaml", [f"methods=[{{name: eraser, eraser: e, gate: {tmp_path / 'g.yaml'}}}]"])
    with pytest.raises(ConfigError, match="gate.concept_prompt must be listed"):
        gate_of(missing, missing.methods[0])
    nofile = load_attack_config(ROOT / "configs/attack/toy.yaml", ["methods=[{name: eraser, eraser: e, gate: nope.yaml}]"])
    with pytest.raises(ConfigError, match="methods\\[eraser\\].gate: nope.yaml not found"):
        gate_of(nofile, nofile.methods[0])


def test_t2vu_train_with_a_gate_writes_a_gated_eraser_loadable_in_two_lines(tiny_model_dir, tmp_path, monkeypatch,
                                                                              capsys):
    """`t2vu train` with `--set gate=...`: the probe is trained after the eraser (prompts from the concept
    section) and saved in the eraser file; `load_eraser(pipe, dir)` gives the gated model; a rerun redoes nothing."""
    import torch
    from tests.family_cases import loaded_eraser_forward

    from pipelines.cli.entry import main
    from unlearn.eraser import read_eraser

    monkeypatch.setenv("T2VU_CACHE", str(tmp_path / "t2vu"))
    out = tmp_path / "run"
    args = ["train", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(out), "--set", "train.steps=2",
            "--set", "gate={threshold: -50, trajectory_steps: 2, probe_steps: 5}"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["gate"]["samples"] > 0 and 0 <= summary["gate"]["train_acc"] <= 1
    es = read_eraser(out / "eraser")
    settings = es.meta.extra["gate"]
    assert es.gate is not None and settings["toward_prompts"] == ["clothed", "dressed"]  # concept.anchors
    assert es.meta.extra["gate_training"]["config"]["negative"] == ["a person", "a face", "clothing", "a background"]
    handle, gated, base = loaded_eraser_forward(tiny_model_dir, out / "eraser")  # the two-line load
    assert handle.eraser_set.gate.last_gate is not None and not torch.allclose(gated, base)
    handle.remove()
    before = (out / "eraser" / "eraser.safetensors").stat().st_mtime_ns
    assert main(args) == 0 and (out / "eraser" / "eraser.safetensors").stat().st_mtime_ns == before
