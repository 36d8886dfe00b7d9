"""Single-process trainer, configs, embedding cache, tiny model directory, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unlearn.config import ConfigError, EraserTrainingConfig, load_eraser_training_config, validate
from unlearn.eraser import read_eraser
from unlearn.models.tiny import make_tiny_model
from unlearn.session import TrainingSession, prepare_embeddings
from unlearn.step import NonFiniteLossError
from unlearn.trainer import read_metrics, train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir  # tests/conftest.py: built once per session


def tiny_cfg(model_dir, tmp_path, **train_kw) -> EraserTrainingConfig:
    data = {
        "model": {"path": str(model_dir), "num_frames": 9, "height": 32, "width": 32},
        "eraser": {"rank": 4},
        "concept": {
            "target": "naked", "prompts": ["a naked body", "a naked person on a beach"],
            "reference": "anchors", "anchors": ["clothed", "dressed"], "preserve": ["a person", "a face"],
        },
        "loss": {"eta": 3.0},
        "train": {"steps": 12, "lr": 1e-3, "batch_size": 2, "preserve_batch_size": 2, "checkpoint_every": 4,
                  "log_every": 1, "cache_dir": str(tmp_path / "cache"), **train_kw},
    }
    return EraserTrainingConfig.model_validate(data)


def test_pipeline_roundtrip_generates(model_dir):
    from diffusers import CogVideoXPipeline

    from unlearn.models.tokenizer import check_tokenizer

    names = sorted(p.name for p in model_dir.iterdir())
    assert names == ["model_index.json", "scheduler", "text_encoder", "tokenizer", "transformer", "vae"]
    pipe = CogVideoXPipeline.from_pretrained(str(model_dir))
    check_tokenizer(pipe.tokenizer, "naked")
    assert pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("naked", add_special_tokens=False).input_ids) == ["▁naked"]
    frames = pipe("a naked body", height=32, width=32, num_frames=9, num_inference_steps=2, guidance_scale=6,
                  max_sequence_length=16, output_type="np", generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 9, 32, 32, 3) and 0 <= frames.min() and frames.max() <= 1


def test_tiny_model_is_deterministic(tmp_path):
    a = make_tiny_model(tmp_path / "a", seed=5)
    b = make_tiny_model(tmp_path / "b", seed=5)
    fa = (a / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    fb = (b / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert fa == fb


def test_unknown_key_and_bad_value_fail_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  etaa: 3\ntrain:\n  steps: -1\n")
    with pytest.raises(ConfigError) as e:
        load_eraser_training_config(bad)
    msg = str(e.value)
    assert str(bad) in msg and "loss.etaa: unknown key" in msg and "train.steps" in msg
    with pytest.raises(ConfigError, match="concept.anchors is empty"):
        validate(EraserTrainingConfig, {"concept": {"reference": "anchors"}})


def test_concept_missing_from_prompt_errors_before_training(model_dir, tmp_path):
    cfg = tiny_cfg(model_dir, tmp_path)
    cfg.concept.prompts = ["a person on a beach"]
    with pytest.raises(ValueError, match="does not occur"):
        train(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "eraser").exists()


def test_embedding_cache_warm_means_no_text_encoder(model_dir, tmp_path):
    cfg = tiny_cfg(model_dir, tmp_path)
    cache = prepare_embeddings(cfg)
    assert cache.encoder_loads == 1
    session = TrainingSession(cfg)
    assert session.cache.encoder_loads == 0, "a warm cache must not load the text encoder"
    from unlearn.models.cogvideox import encode_prompts, load_components

    parts = load_components(model_dir, components=("tokenizer", "text_encoder"))
    direct = encode_prompts(parts["tokenizer"], parts["text_encoder"], ["a naked body"], 16)[0]
    assert torch.equal(session.emb["a naked body"], direct)
    assert set(session.emb) >= {"", "a naked body", "a clothed body", "a dressed body", "a person"}


def test_train_interrupt_and_resume_is_exact(model_dir, tmp_path, monkeypatch):
    cfg = tiny_cfg(model_dir, tmp_path)
    full = train(cfg, tmp_path / "full", progress=False)
    assert full["resumed_from"] == 0

    real_batch = TrainingSession.batch

    def dying_batch(self, step):
        if step == 6:
            raise KeyboardInterrupt("simulated kill")
        return real_batch(self, step)

    monkeypatch.setattr(TrainingSession, "batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut", progress=False)
    assert not (tmp_path / "cut" / "eraser").exists()
    assert json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())["step"] == 4
    monkeypatch.setattr(TrainingSession, "batch", real_batch)
    resumed = train(cfg, tmp_path / "cut", progress=False)
    assert resumed["resumed_from"] == 4
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == list(range(1, 13)), "metrics must have each step exactly once"
    a, b = read_eraser(tmp_path / "full" / "eraser"), read_eraser(tmp_path / "cut" / "eraser")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    # a finished run is not redone
    again = train(cfg, tmp_path / "cut", progress=False)
    assert again == resumed


def test_nonfinite_loss_stops_without_writing_an_eraser(model_dir, tmp_path):
    cfg = tiny_cfg(model_dir, tmp_path)
    cfg.loss.eta = 1e300  # finite (the config refuses inf), but the target overflows: v_ref - eta * (...)
    with pytest.raises(NonFiniteLossError, match="step 1"):
        train(cfg, tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "eraser").exists()
    assert not (tmp_path / "nan" / "summary.json").exists()


@pytest.mark.parametrize("reference", ["empty", "paired"])
def test_trajectory_source_and_reference_modes(model_dir, tmp_path, reference):
    csv = tmp_path / "pairs.csv"
    csv.write_text('prompt,normal prompt\n"a naked person on a beach","a person on a beach"\n"a naked woman","a woman"\n')
    cfg = tiny_cfg(model_dir, tmp_path, xt_source="trajectory", steps=3,
                   trajectory={"num_inference_steps": 4, "guidance_scale": 3.0, "pool_size": 2})
    if reference == "paired":
        cfg.concept = cfg.concept.model_copy(update={"reference": "paired", "prompts_file": str(csv)})
    else:
        cfg.concept.reference = reference
    session = TrainingSession(cfg)
    refs = {it.references for it in session.data.items}
    assert refs == ({("",)} if reference == "empty" else {("a person on a beach",), ("a woman",)})
    states, times = next(iter(session.source.pool.values()))
    assert states.shape[:2] == (4, 2) and times.tolist() == sorted(times.tolist(), reverse=True)
    b = session.batch(0)
    assert set(b.t_c.tolist()) <= set(times.tolist())
    out = session.objective(b)
    assert torch.isfinite(out["loss"])


@pytest.mark.slow
def test_cli_train_runs_and_reruns_without_work(model_dir, tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text((ROOT / "configs" / "tiny.yaml").read_text())
    env_cache = {"T2VU_CACHE": str(tmp_path / "t2vu")}
    import os

    env = {**os.environ, **env_cache}
    cmd = [sys.executable, "-m", "pipelines.cli.entry", "train", "-c", str(cfg), "-o", str(tmp_path / "run"),
           "--set", "train.steps=6", "--set", "train.checkpoint_every=3"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["steps"] == 6 and Path(summary["eraser"]).is_dir()
    # The refusals come before any model is loaded: the same `main` in this process (a subprocess costs an import).
    from pipelines.cli.entry import main

    monkeypatch.setenv("T2VU_CACHE", env_cache["T2VU_CACHE"])
    capsys.readouterr()
    assert main([*cmd[3:], "--set", "loss.etta=1"]) == 2
    assert "loss.etta: unknown key" in capsys.readouterr().err
    # The same folder with another config is refused before anything is loaded or written,
    # instead of printing the old summary and keeping the old (rank 8) eraser.
    before = (tmp_path / "run" / "config.yaml").read_text()
    assert main([*cmd[3:], "--set", "eraser.rank=2"]) == 2
    err = capsys.readouterr().err
    assert "eraser.rank" in err and "Traceback" not in err
    assert (tmp_path / "run" / "config.yaml").read_text() == before
    assert read_eraser(tmp_path / "run" / "eraser").meta.rank == 8


def test_an_empty_config_file_is_refused(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="empty.yaml is empty"):
        load_eraser_training_config(empty)


def test_interrupted_run_that_refuses_to_resume_keeps_its_config(model_dir, tmp_path, monkeypatch):
    """The resume check comes before config.yaml is (re)written."""
    out = tmp_path / "run"
    cfg = tiny_cfg(model_dir, tmp_path, steps=4, checkpoint_every=2)
    real_batch = TrainingSession.batch

    def dying_batch(self, step):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_batch(self, step)

    monkeypatch.setattr(TrainingSession, "batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=False)
    monkeypatch.setattr(TrainingSession, "batch", real_batch)
    before = (out / "config.yaml").read_text()
    changed = cfg.model_copy(update={"loss": cfg.loss.model_copy(update={"eta": 5.0})})
    with pytest.raises(ConfigError, match="different config"):
        train(changed, out, progress=False)
    assert (out / "config.yaml").read_text() == before
