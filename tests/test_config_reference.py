"""docs/config-reference.md is generated from the schema and must be current."""

from pathlib import Path

from pipelines.config.reference import render

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_is_current():
    doc = (ROOT / "docs" / "config-reference.md").read_text()
    assert doc == render(), "stale: run `python -m pipelines.config.reference > docs/config-reference.md`"
    assert "| `loss.eta` |" in doc and "| `search.space` |" in doc and "| `generation.num_inference_steps` |" in doc
