"""Robustness as a search objective (`search.objective.attack`, pipelines.search.robustness): the section is checked
before anything trains, a real attack on the toy model gives the attack_* figures the objective and its score read
(a degenerate one the worst values). The `t2vu tune` trial that reports them and scores with them is
tests/test_search_reproducible.py's quiet run (one tune run serves both checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.config.pipeline import load_pipeline_config
from unlearn.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
ROBUST = ROOT / "configs" / "search" / "toy-robust.yaml"
METRIC = "attack_softprompt_0_5x_asr_above_floor"


def payload(tmp_path, overrides=()):
    from pipelines.search.objective import objective_payload

    return objective_payload(load_pipeline_config(ROBUST, list(overrides)), ROBUST.parent, tmp_path)


# --- fast: the section ------------------------------------------------------------------------------------------

def test_the_example_resolves_to_one_fixed_attack_checked_before_any_trial(tmp_path):
    from pipelines.search.robustness import attack_keys

    acfg = payload(tmp_path).attack
    assert acfg.attack_names() == ["softprompt-0.5x"] and acfg.prompts.limit == 16 and acfg.preserve.path is None
    assert (acfg.softprompt.steps, acfg.softprompt.restarts, acfg.softprompt.budgets) == (60, 1, [0.5])
    assert acfg.words == ["red"] and acfg.detector.flag == "target_present" and not acfg.mlflow.enabled
    assert Path(acfg.config_dir) == ROOT / "configs" / "attack"  # its CSVs resolve next to the attack config
    assert METRIC in attack_keys(acfg.attack_names()) and f"{METRIC}_se" in attack_keys(acfg.attack_names())
    assert not (tmp_path / "attack").exists()  # checked, nothing written
    inline = payload(tmp_path, ["search.objective.attack.config={words: [red], prompts: {path: "
                                f"{ROOT / 'configs' / 'attack' / 'toy_prompts.csv'}}}, methods: [], attacks: [clean]}}",
                                "search.objective.attack.attacks=[softprompt]",
                                "search.objective.attack.limit=3"]).attack
    assert inline.attack_names() == ["softprompt-0.5x"] and inline.prompts.limit == 3


@pytest.mark.parametrize("overrides,where,match", [
    (["search.objective.attack.limit=0"], "toy-robust.yaml", r"search\.objective\.attack\.limit: Input should be greater than or equal to 1"),
    (["search.objective.attack.attacks=[clean, clean]"], "toy-robust.yaml", r"search\.objective\.attack\.attacks: .*each once"),
    (["search.objective.attack.attacks=[softprompts]"], None, r"search\.objective\.attack\.attacks: unknown \['softprompts'\]; choose from \['clean'"),
    (["search.objective.attack=null"], "toy-robust.yaml", r"names attack figures \['attack_softprompt_0_5x.*add one"),
    (["search.objective.attack.config=nope.yaml"], None, r"search\.objective\.attack\.config: nope\.yaml not found .*e\.g\. \.\./attack/toy\.yaml"),
    (["search.objective.attack.overrides={softprompt.stepz: 3}"], None, r"toy\.yaml \(search\.objective\.attack\.config\): softprompt\.stepz: unknown key"),
    (["search.objective.attack.budgets=[1.0]"], None, r"names \['attack_softprompt_0_5x_asr_above_floor'\], which .* make \['attack_softprompt_1x_asr'"),
    (["search.objective.attack.overrides={prompts.path: missing.csv}"], None, r"prompts\.path.*missing\.csv"),
])
def test_a_bad_section_is_one_line_naming_file_field_and_fix(tmp_path, overrides, where, match):
    with pytest.raises(ConfigError, match=match) as err:
        if where:  # a schema error: found when the search config loads
            load_pipeline_config(ROBUST, overrides)
        else:  # found when the objective resolves its attack, in the search driver before Ray starts
            payload(tmp_path, overrides)
    assert len(str(err.value).splitlines()) == 1, str(err.value)
    assert where is None or where in str(err.value)


def test_tune_with_a_bad_attack_exits_2_before_the_search_starts(tmp_path, capsys):
    from pipelines.cli import entry as cli

    out = tmp_path / "run"
    rc = cli.main(["tune", "-c", str(ROBUST), "-o", str(out), "--set", "search.objective.attack.config=nope.yaml"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "search.objective.attack.config: nope.yaml not found" in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1 and not (out / "trials").exists() and not (out / "search_config.yaml").exists()


# --- a real attack on the toy model -----------------------------------------------------------------------------

def toy_eraser(directory: Path, up_scale: float = 0.0) -> Path:
    """An eraser for the toy model: up = 0 changes nothing (the base model's videos); a huge `up` makes NaN videos."""
    import torch

    from eval.planning import resolve_model
    from eval.config import load_eval_config
    from unlearn.eraser import CONFIG_NAME, WEIGHTS_NAME, EraserMeta, EraserSet

    model = resolve_model(load_eval_config(ROOT / "configs" / "eval" / "toy.yaml"))
    tcfg = json.loads((model / "transformer" / "config.json").read_text())
    n = tcfg["num_layers"]
    es = EraserSet(EraserMeta(hidden_size=tcfg["num_attention_heads"] * tcfg["attention_head_dim"], rank=2,
                              num_blocks=n, block_indices=list(range(n)), base_model=str(model)))
    if up_scale:
        with torch.no_grad():
            for name, p in es.named_parameters():
                p.fill_(up_scale if ".up." in name else 0.5)
    from dataclasses import asdict

    from safetensors.torch import save_file

    directory.mkdir(parents=True)  # written directly: save_eraser refuses absurd weights, an attack must not
    save_file({k: v.contiguous() for k, v in es.state_dict().items()}, str(directory / WEIGHTS_NAME))
    (directory / CONFIG_NAME).write_text(json.dumps(asdict(es.meta)))
    return directory


def objective(attacks, **weights):
    from pipelines.config.search import ObjectiveConfig

    metrics = [{"name": "target_rate_erased", "mode": "min"}, {"name": "attack_clean_asr_above_floor", "mode": "min"}]
    return ObjectiveConfig.model_validate({
        "metrics": metrics, "scalarize": {"weights": weights},
        "attack": {"config": "../attack/toy.yaml", "attacks": attacks, "budgets": [0.5], "limit": 2, "steps": 2,
                   "restarts": 1}})


def test_a_real_attack_joins_the_objective_and_its_score_and_a_rerun_makes_nothing(tmp_path):
    from eval.config import load_eval_config
    from pipelines.search.objective import objective_metrics
    from pipelines.search.robustness import load_objective_attack, run_objective_attack

    ecfg = load_eval_config(ROOT / "configs" / "eval" / "toy.yaml")
    spec = objective(["clean", "softprompt"], attack_clean_asr_above_floor=2.0)
    acfg = load_objective_attack(spec, ROBUST.parent, ecfg, tmp_path)
    method = {"name": "eraser", "eraser": str(toy_eraser(tmp_path / "noop"))}
    got = run_objective_attack(acfg, ecfg, method, tmp_path / "attack")
    # a no-op eraser is the base model: it draws red on every red prompt and on none of their benign anchors
    assert got["attack_clean_asr"] == 1.0 and got["attack_clean_asr_above_floor"] == 1.0
    assert got["attack_clean_asr_se"] == 0.0 and got["attack_clean_asr_above_floor_se"] == 0.0
    assert got["attack_floor"] == 0.0 and got["attack_floor_base"] == 0.0 and got["attack_rows"] == 2.0
    assert got["attack_videos_made"] == 2 * 2 + 2 + 2  # eraser: 2 columns + its anchors; the base model's anchors
    assert got["attack_degenerate_fraction"] == 0.0 and got["attack_degenerate_ok"] is True
    rows = [json.loads(p.read_text()) for p in (tmp_path / "attack" / "cells" / "eraser" / "softprompt-0.5x" / "rows").glob("*.json")]
    assert len(rows) == 2 and got["attack_softprompt_0_5x_asr"] == sum(r["flagged"] for r in rows) / 2
    assert (tmp_path / "attack" / "summary.json").is_file() and (tmp_path / "attack" / "attack_config.json").is_file()

    # merged into an eval summary: the objective's values, its score (weight 2 on the attack) and every attack figure
    values = objective_metrics(spec, {"target_rate_erased": 0.25, "target_rate_base": 1.0, "rows_total": 4, **got})
    assert values["attack_clean_asr_above_floor"] == 1.0 and values["score"] == pytest.approx(0.25 + 2 * 1.0)
    assert values["attack_softprompt_0_5x_asr"] == got["attack_softprompt_0_5x_asr"] and "attack_degenerate_ok" not in values

    again = run_objective_attack(acfg, ecfg, method, tmp_path / "attack")  # a resumed trial: nothing redone
    assert again["attack_videos_made"] == 0 and {k: v for k, v in again.items() if k not in ("attack_videos_made", "attack_s")} \
        == {k: v for k, v in got.items() if k not in ("attack_videos_made", "attack_s")}


def test_an_attack_on_degenerate_videos_makes_the_worst_values_not_a_robust_eraser(tmp_path):
    from eval.config import load_eval_config
    from pipelines.search.objective import objective_metrics
    from pipelines.search.robustness import load_objective_attack, run_objective_attack

    ecfg = load_eval_config(ROOT / "configs" / "eval" / "toy.yaml")
    spec = objective(["clean"])
    acfg = load_objective_attack(spec, ROBUST.parent, ecfg, tmp_path)
    got = run_objective_attack(acfg, ecfg, {"name": "eraser", "eraser": str(toy_eraser(tmp_path / "nan", 1e30))},
                               tmp_path / "attack")
    assert got["attack_clean_asr"] == 0.0  # NaN videos draw no red: on its own, a perfectly "robust" eraser
    assert got["attack_degenerate_fraction"] == 1.0 and got["attack_degenerate_ok"] is False
    values = objective_metrics(spec, {"target_rate_erased": 0.0, "target_rate_base": 1.0, "rows_total": 4, **got})
    assert values["score"] == float("inf") and values["attack_clean_asr_above_floor"] == float("inf")
    assert values["attack_degenerate_fraction"] == 1.0


def test_a_method_baseline_is_attacked_as_a_trial_is(tmp_path):
    """search.objective.baselines next to an attack: negprompt is judged by the same eval and the same attack (its
    method where the eraser stands), so its row has the attack figures the objective names."""
    from pipelines.search.baselines import run_baselines
    from pipelines.search.objective import objective_payload
    from pipelines.tracking.tracker import Tracker

    cfg = load_pipeline_config(ROBUST, [
        "search.objective.toy_prompts={target: red, n: 1, sets: [target], preserve_sets: [nontarget]}",
        "search.objective.baselines=[negprompt]", "search.objective.attack.attacks=[clean, softprompt]",
        "search.objective.attack.limit=2", "search.objective.attack.steps=1", "mlflow.enabled=false"])
    obj = objective_payload(cfg, ROBUST.parent, tmp_path)
    assert run_baselines(cfg, obj, tmp_path, Tracker(None)) == []
    values = json.loads((tmp_path / "baselines" / "negprompt" / "objective.json").read_text())
    attack = tmp_path / "baselines" / "negprompt" / "attack"
    assert json.loads((attack / "attack_config.json").read_text())["attack"]["methods"][0]["name"] == "negprompt"
    rows = [json.loads(p.read_text()) for p in (attack / "cells" / "eraser" / "clean" / "rows").glob("*.json")]
    assert len(rows) == 2 and values["attack_clean_asr"] == sum(r["flagged"] for r in rows) / 2
    assert rows[0]["method_info"] and values["attack_rows"] == 2.0 and METRIC in values
    assert values["score"] == pytest.approx(values["target_rate_erased"] + values[METRIC]
                                            - values["preserve_nontarget_acc_erased"]
                                            - 0.5 * values["target_content_acc_erased"]
                                            + 5.0 * max(0.0, 0.95 - values["preserve_nontarget_acc_erased"]))
