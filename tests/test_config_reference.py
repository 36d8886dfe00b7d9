"""docs/config-reference.md is generated from the schema and must be current."""

from pathlib import Path

from pipelines.config.reference import render

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_is_current():
    doc = (ROOT / "docs" / "config-reference.md").read_text()
    assert doc == render(), "stale: run `python -m pipelines.config.reference > docs/config-reference.md`"
    assert "| `loss.eta` |" in doc and "| `search.space` |" in doc and "| `generation.num_inference_steps` |" in doc


def test_every_key_has_a_description_from_its_field():
    """Each key documents itself in the schema (`Field(description=...)`; sections may use their class
    docstring): the reference and `t2vu config show` print it, nothing parses comments."""
    from eval.config import EvalConfig
    from pipelines.config.attack import AttackConfig
    from pipelines.config.pipeline import PipelineConfig
    from pipelines.config.reference import rows

    for model in (PipelineConfig, EvalConfig, AttackConfig):
        missing = [key for key, _, _, doc in rows(model) if not doc.strip()]
        assert not missing, f"{model.__name__}: keys without a description: {missing}"
    assert ("loss.eta", "float", "`7.0`") == rows(PipelineConfig)[[r[0] for r in rows(PipelineConfig)].index("loss.eta")][:3]
    doc = dict((k, d) for k, _, _, d in rows(PipelineConfig))
    assert doc["train.lr"].startswith("AdamW learning rate")  # was an undocumented key before
    assert doc["search.objective.scalarize.constraints[].metric"] == "The eval-summary key the bound applies to."
