"""The toy world's published numbers come from results files written by the commands that measured them.

`t2vu toy quality MODEL --results-file` (the base model's quality, as `t2vu toy build` measures it) feeds
rendered blocks in docs/benchmarks.md;
`--rows-seed` and the benchmark's recipe variants are what the recipe was chosen and confirmed with.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import render_results as rr
from pipelines.cli.entry import main
from pipelines.runtime.results_file import read_results
from pipelines.toy import benchmark
from toyworld import world

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # loads the toy pipeline and generates 5 videos (~5 s quiet, minutes on a loaded machine)
def test_toy_quality_writes_a_results_file_the_docs_render(tmp_path, capsys):
    out = tmp_path / "results" / "toy_model_quality.json"
    out.parent.mkdir()
    assert main(["toy", "quality", "builtin:toy", "--n", "1", "--results-file", str(out)]) == 0
    rec = read_results(out)
    assert rec["argv"] == ["t2vu", "toy", "quality", "builtin:toy", "--n", "1", "--results-file", str(out)]
    summ = rec["figures"]["summary"]
    # one row of each of the 5 sets: 3 single-object videos (target, synonym, nontarget) and 2 two-object ones
    assert (summ["n_single"], summ["n_two_object"]) == (3, 2)
    assert rec["settings"]["generation"]["num_inference_steps"] == 20 and "seconds" not in rec["settings"]["generation"]
    assert set(rec["figures"]["sets"]) == set(world.EVAL_SETS)
    body = rr.render_block("toy_model_quality", tmp_path / "doc.md", out.parent)
    row = next(line for line in body.splitlines() if line.startswith("| colour accuracy, single objects"))
    assert row == f"| colour accuracy, single objects | {summ['colour_acc']:.3f} | ≥ 0.95 | " \
                  f"{'yes' if summ['colour_acc'] >= 0.95 else '**no**'} |"
    assert "`builtin:toy`" in body and "t2vu toy quality builtin:toy" in body


def test_toy_quality_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert main(["toy", "quality", "builtin:toy", "--n", "0"]) == 2
    assert main(["toy", "quality", "builtin:toy", "--results-file", str(tmp_path / "x.txt")]) == 2
    assert main(["toy", "quality", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "--n 0" in err[0] and ".json" in err[1] and "not a toy model directory" in err[2], err


def test_the_toy_numbers_of_the_docs_are_rendered_blocks():
    names = {name for name, _ in rr.BLOCK.findall((ROOT / "docs" / "benchmarks.md").read_text())}
    assert {"toy_model_quality", "toy_wan_model_quality", "toy_wan_benchmark"} <= names
    for name in ("toy_model_quality", "toy_wan_model_quality", "toy_wan_benchmark"):
        stem = rr.VIEWS[name][0]
        assert read_results(rr.RESULTS_DIR / f"{stem}.json")["command"].startswith("t2vu toy ")


def test_synonym_preservation_variants_add_the_other_colours_synonyms_once():
    base = benchmark.method_config(benchmark.VARIANTS["default"])
    cfg = benchmark.method_config(benchmark.VARIANTS["presyn"])
    added = [p for p in cfg.concept.preserve if p not in base.concept.preserve]
    assert len(added) == 4 * 16 and len(set(cfg.concept.preserve)) == len(cfg.concept.preserve)
    words = {world.parse_prompt(p).objects[0].colour for p in added}
    assert words == {"green", "blue", "yellow", "purple"} and not any(" red " in p for p in added)
    assert {p.split()[1] for p in added} == {"emerald", "azure", "golden", "violet"}
    paired = benchmark.method_config(benchmark.VARIANTS["paired_presyn"])
    assert paired.concept.reference == "paired" and paired.concept.preserve == cfg.concept.preserve


def test_rows_seed_draws_other_eval_rows(tmp_path):
    def rows(path):
        with open(path, newline="") as f:
            return [(r["prompt"], r["seed"]) for r in csv.DictReader(f)]

    m0, n0 = benchmark.write_prompt_sets(tmp_path, 8)
    m1, n1 = benchmark.write_prompt_sets(tmp_path, 8, seed=1)
    assert m0 != m1 and n0 != n1
    assert len(rows(m1)) == 4 * 8 and len(rows(n1)) == 8
    assert not {s for _, s in rows(m0)} & {s for _, s in rows(m1)}  # fresh generation seeds
    assert rows(n1) == [(r["prompt"], str(r["seed"])) for r in world.eval_rows("nontarget", 128, 1)[:8]]


def test_a_prompt_filter_variant_filters_the_recipes_prompts_file_too(tmp_path):
    """`single` on a recipe that reads its concept prompts from a CSV (paired reference): the CSV's rows replace
    the list, so filtering only the list would leave the variant equal to the default."""
    from unlearn.data import read_prompt_csv

    recipe, _ = benchmark.RECIPES["wan"]
    default = benchmark.method_config(benchmark.VARIANTS["default"], recipe=recipe).concept
    single = benchmark.method_config(benchmark.VARIANTS["single"], recipe=recipe, workdir=tmp_path).concept
    cols = [single.prompts_column, single.paired_column]
    rows, all_rows = read_prompt_csv(single.prompts_file, cols), read_prompt_csv(default.prompts_file, cols)
    assert Path(single.prompts_file).parent == tmp_path
    assert len(all_rows) == 24 and rows == [r for r in all_rows if " and " not in r["prompt"]] and len(rows) == 16
