"""The outputs say what was evaluated: the prompt CSV actually read (also when `--prompts` replaces
the config's) and its sha256, the model, the eraser's digest, the classifier and its threshold, in
eval_config.json and summary.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "prompts"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_outputs_record_what_was_evaluated(tmp_path, capsys):
    from pipelines.cli.entry import main
    from unlearn.eraser import EraserMeta, EraserSet, save_eraser
    from unlearn.models.registry import resolve_model_path

    model = resolve_model_path("builtin:tiny")
    tcfg = json.loads((model / "transformer" / "config.json").read_text())
    n = tcfg["num_layers"]
    es = EraserSet(EraserMeta(hidden_size=tcfg["num_attention_heads"] * tcfg["attention_head_dim"], rank=2,
                              num_blocks=n, block_indices=list(range(n))))
    with torch.no_grad():
        for p in es.parameters():
            p.fill_(0.01)
    eraser = save_eraser(es, tmp_path / "eraser")
    other = tmp_path / "other.csv"
    other.write_text("prompt,seed\na naked body,3\n")
    cfg = tmp_path / "e.yaml"
    cfg.write_text(
        f"model: {{path: {model}, dtype: float32}}\n"
        f"eraser: {eraser}\n"
        f"prompts: {{path: {EXAMPLES / 'nudity_example.csv'}}}\n"
        "generation: {num_inference_steps: 2, num_frames: 9, height: 32, width: 32, scheduler: ddim,"
        " vae_tiling: false, vae_slicing: false}\n"
        "classifier: {nudenet: {frames: 1, threshold: 0.55}}\n"
        "output: {grid_rows: 0, save_videos: false, save_gifs: false}\n"
        "runtime: {scorer: inline, progress: false}\n"
    )
    out = tmp_path / "out"
    assert main(["eval", "--config", str(cfg), "--output", str(out), "--prompts", str(other)]) == 0
    capsys.readouterr()
    want = {
        "prompts_path": str(other.resolve()), "prompts_sha256": sha256(other), "preserve_path": None,
        "preserve_sha256": None, "model": str(model.resolve()), "eraser": str(eraser),
        "eraser_sha256": sha256(eraser / "eraser.safetensors"), "classifier": "nudenet", "classifier_threshold": 0.55,
    }
    summary = json.loads((out / "summary.json").read_text())
    record = json.loads((out / "eval_config.json").read_text())
    assert {k: summary[k] for k in want} == want
    assert record["provenance"] == want
    # the config as run: the CSV that --prompts named, not the config's example
    assert record["config"]["prompts"]["path"] == str(other.resolve())
    assert summary["rows_total"] == 1
    report = (out / "report.md").read_text()
    assert f"`{other.resolve()}` (sha256 `{sha256(other)}`)" in report and want["eraser_sha256"] in report
    assert "classifier: nudenet, threshold 0.55" in report
