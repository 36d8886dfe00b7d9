"""Telling trials apart: bootstrap standard errors of eval metrics, objectives with their errors,
tie-breaks by finer metrics in the best trial / the report / `t2vu run`'s selection, and a Pareto
plot with a panel for every pair of objectives. Plain data, no Ray: the search paths that
produce these values run in tests/test_tune.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from eval.uncertainty import bootstrap_se, paired_se
from pipelines.config.pipeline import PipelineConfig, SelectConfig
from pipelines.search.objective import objective_metrics
from pipelines.run.pipeline import select_best
from pipelines.search.results import SearchResult, TrialSummary

OBJECTIVE = {
    "metrics": [{"name": "target_rate_erased", "mode": "min"}, {"name": "preserve_nontarget_acc_erased", "mode": "max"},
                {"name": "target_content_acc_erased", "mode": "max"}],
    "scalarize": {"weights": {"target_content_acc_erased": 0.5},
                  "tie_break": [{"name": "target_target_pixels_erased", "mode": "min"}]},
}


def _cfg() -> PipelineConfig:
    return PipelineConfig.model_validate({"search": {"name": "s", "space": {"loss.eta": {"uniform": [1, 2]}},
                                                     "objective": OBJECTIVE}})


def _rate_stat(items):
    return {"rate": sum(items) / len(items), "n_rows": float(len(items)), "rows": float(len(items))}


def test_bootstrap_se_of_a_rate_matches_the_binomial_and_is_deterministic():
    items = [1] * 21 + [0] * 3  # 21/24 = 0.875
    se = bootstrap_se(items, _rate_stat, samples=2000)
    binomial = math.sqrt(0.875 * 0.125 / 24)  # 0.0675
    assert abs(se["rate"] - binomial) < 0.1 * binomial
    assert "n_rows" not in se and se["rows"] == 0.0  # `n_*` keys (counts) are left out, others kept
    assert bootstrap_se(items, _rate_stat) == bootstrap_se(items, _rate_stat)  # seeded
    assert bootstrap_se([1], _rate_stat) == {}  # one row has no spread to estimate
    assert bootstrap_se([1] * 10, _rate_stat)["rate"] == 0.0  # 10/10 is 10/10 in every resample


def test_bootstrap_resamples_within_each_set_and_pairs_together():
    class Clf:
        @staticmethod
        def summarize(rs):
            out = {}
            for s in {r["set"] for r in rs}:
                sub = [r for r in rs if r["set"] == s]
                out[f"n_{s}"] = float(len(sub))
                out[f"{s}_rate"] = sum(r["hit"] for r in sub) / len(sub)
            return out

        @staticmethod
        def summarize_paired(base, erased):
            assert [b["i"] for b in base] == [e["i"] for e in erased]  # pairs stay aligned
            return {"kept": sum(e["hit"] for e in erased) / max(1, sum(b["hit"] for b in base))}

    recs = [{"set": "a", "hit": i % 2, "i": i} for i in range(20)] + [{"set": "b", "hit": 1, "i": 20 + i} for i in range(4)]
    se = bootstrap_se(recs, Clf.summarize)
    assert se["b_rate"] == 0.0 and se["a_rate"] > 0  # set b keeps its 4 rows in every resample (all hits)
    assert "n_a" not in se
    base = [dict(r, hit=1) for r in recs]
    assert paired_se(Clf, base, recs)["kept"] > 0


def test_eval_summary_carries_standard_errors(tmp_path):
    """aggregate(): every classifier metric of each side gets `_se`, paired ones and PSNR too."""
    from eval.classifiers.toy import ToyClassifier
    from eval.metrics import aggregate
    from toyworld import world

    clf = ToyClassifier(target="red")
    rows = []
    for i, r in enumerate(world.eval_rows("target", 12, seed=0, target="red")):
        rec = {"prompt": r["prompt"], "seed": r["seed"], "set": "target", "target_present": i % 3 == 0,
               "colour_correct": True, "shape_correct": True, "motion_correct": i % 4 != 0, "content_correct": i % 4 != 0,
               "target_pixels": float(i), "all_named_present": True, "others_present": False, "n_objects": 1}
        rows.append({"set": "target", "records": {"base": dict(rec, target_present=True), "erased": rec},
                     "quality": {}, "psnr": 20.0 + i, "ssim": 0.5})
    s = aggregate(rows, clf)
    assert s["target_rate_erased"] == pytest.approx(4 / 12) and 0 < s["target_rate_erased_se"] < 0.25
    assert s["target_rate_base_se"] == 0.0 and "target_target_pixels_erased_se" in s
    assert s["psnr_target_se"] == pytest.approx(math.sqrt(13.0) / math.sqrt(12), rel=1e-6)  # std 3.606 / sqrt 12
    assert "target_content_kept_se" in s


def test_objective_reports_each_metric_with_its_error_and_the_score_error():
    spec = _cfg().search.objective
    summary = {"target_rate_erased": 0.0, "target_rate_erased_se": 0.0, "preserve_nontarget_acc_erased": 0.875,
               "preserve_nontarget_acc_erased_se": 0.06, "target_content_acc_erased": 0.9,
               "target_content_acc_erased_se": 0.05, "target_target_pixels_erased": 3.5, "rows_total": 72}
    v = objective_metrics(spec, summary)
    assert v["preserve_nontarget_acc_erased_se"] == 0.06 and v["target_target_pixels_erased"] == 3.5
    assert v["score_se"] == pytest.approx(math.sqrt(0.06 ** 2 + (0.5 * 0.05) ** 2))
    del summary["target_content_acc_erased_se"]
    assert "score_se" not in objective_metrics(spec, summary)  # not every objective has an error


def _trial(tid, **m):
    return TrialSummary(trial_id=f"trial_{tid}", status="completed", params={"loss.eta": 1.0}, metrics=m,
                        eraser=f"/e/{tid}", trial_dir="")


def test_tied_scores_are_ordered_by_the_tie_break_everywhere(tmp_path):
    from pipelines.search.report import render_markdown
    from pipelines.search.results import collect_result  # noqa: F401 - the same ranking_key orders it

    cfg = _cfg()
    rank = cfg.search.objective.scalarize.ranking_key
    base = {"target_rate_erased": 0.0, "preserve_nontarget_acc_erased": 1.0, "target_content_acc_erased": 0.875,
            "score": -1.4375, "score_se": 0.03}
    a = _trial("a", **base, target_target_pixels_erased=9.0)
    b = _trial("b", **base, target_target_pixels_erased=2.0)
    c = _trial("c", **{**base, "score": -1.0}, target_target_pixels_erased=0.0)
    assert sorted([a, b, c], key=lambda t: rank(t.metrics))[0] is b  # same score: fewer red pixels first
    assert rank({"score": -1.4375}) > rank(b.metrics)  # a trial without the tie-break metric ranks after
    r = SearchResult(output_dir=tmp_path, name="s", metric_names=cfg.search.metric_names(), score_name="score",
                     trials=[a, b, c], best=b, pareto=[a, b], baseline={})
    rule = SelectConfig(metric="target_rate_erased", mode="min")
    assert select_best(r, rule, rank).trial_id == "trial_b"  # t2vu run: tied on the metric, then the ranking
    assert select_best(r, rule).trial_id == "trial_a"  # without it: the first of the tied trials
    md = render_markdown(r, cfg, tmp_path, [])
    assert "-1.438 ± 0.03" in md and "ties are ordered by `target_target_pixels_erased`" in md
    pareto_rows = md.split("## Pareto set")[1].split("## All trials")[0]
    assert pareto_rows.index("trial_b") < pareto_rows.index("trial_a")


def test_pareto_plot_has_a_panel_for_every_pair_of_objectives(tmp_path):
    from PIL import Image

    from pipelines.search.plots import plot_pareto

    cfg = _cfg()
    trials = [_trial(i, target_rate_erased=0.1 * i, preserve_nontarget_acc_erased=1 - 0.05 * i,
                     target_content_acc_erased=0.9, target_rate_erased_se=0.05, score=0.0) for i in range(4)]
    r = SearchResult(output_dir=tmp_path, name="s", metric_names=cfg.search.metric_names(), score_name="score",
                     trials=trials, best=trials[0], pareto=trials, baseline={"target_rate_erased": 1.0,
                                                                            "preserve_nontarget_acc_erased": 1.0})
    three = Image.open(plot_pareto(tmp_path / "p3.png", r, cfg)).size
    two = PipelineConfig.model_validate({"search": {**cfg.search.model_dump(mode="json"), "objective": {
        **OBJECTIVE, "metrics": OBJECTIVE["metrics"][:2], "scalarize": {}}}})
    one_panel = Image.open(plot_pareto(tmp_path / "p2.png", r, two)).size
    assert three[0] > 2.5 * one_panel[0] and abs(three[1] - one_panel[1]) < 10  # 3 panels side by side (3 pairs)
    assert Path(tmp_path / "p3.png").stat().st_size > 10_000
