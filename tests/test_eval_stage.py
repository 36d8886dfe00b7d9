"""The evaluation stage on the tiny CogVideoX with the real pipeline and real NudeNet:
identical seeds, erasers toggled on one pipeline, outputs, MLflow, interrupt + resume,
Ray actors, classifier plugins, the CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.config import EvalConfig
from pipelines.tracking.mlflow_eval import run_tracked_eval
from unlearn.fsutil import finished_files

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "prompts"
N_TARGET, N_PRESERVE = 3, 2


# --- fixtures (module-level: shared by the tests of this file only) --------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    from unlearn.models.registry import resolve_model_path

    return resolve_model_path("builtin:tiny")


@pytest.fixture(scope="module")
def eraser_dir(tiny_model, tmp_path_factory):
    """A non-trivial eraser for the tiny model: random (not zero) weights, saved for real."""
    from unlearn.eraser import EraserMeta, EraserSet, save_eraser

    tcfg = json.loads((tiny_model / "transformer" / "config.json").read_text())
    n = tcfg["num_layers"]
    es = EraserSet(EraserMeta(hidden_size=tcfg["num_attention_heads"] * tcfg["attention_head_dim"], rank=4,
                              num_blocks=n, block_indices=list(range(n)), target_concept="naked",
                              base_model=str(tiny_model)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in es.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return save_eraser(es, tmp_path_factory.mktemp("eraser") / "eraser")


def make_cfg(tiny_model, eraser_dir, **sections) -> EvalConfig:
    data = {
        "model": {"path": str(tiny_model), "dtype": "float32"},
        "eraser": str(eraser_dir) if eraser_dir else None,
        "prompts": {"path": str(EXAMPLES / "nudity_example.csv"), "limit": N_TARGET},
        "preserve": {"path": str(EXAMPLES / "preserve_example.csv"), "limit": N_PRESERVE},
        "generation": {"num_inference_steps": 3, "num_frames": 9, "height": 32, "width": 32, "scheduler": "ddim",
                       "vae_tiling": False, "vae_slicing": False},
        "classifier": {"name": "nudenet", "nudenet": {"frames": 3, "threshold": 0.5}},
        "output": {"grid_rows": 2, "gif_height": 32, "grid_height": 32},
        "runtime": {"num_actors": 0, "scorer": "thread", "progress": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return EvalConfig.model_validate(data)


def read_results(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def row_files(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in finished_files(out / "rows", "*.json")}


COMPARE_KEYS = ("records", "psnr", "ssim", "seed", "prompt")


@pytest.fixture(scope="module")
def reference_run(tiny_model, eraser_dir, tmp_path_factory):
    """One uninterrupted in-process run (scorer in a separate process), logged to MLflow."""
    import mlflow
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("ref")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("trial-exp")
    run_id = client.create_run(exp).info.run_id  # e.g. a Tune trial's child run, owned by its caller
    cfg = make_cfg(tiny_model, eraser_dir, runtime={"scorer": "process"},
                   mlflow={"tracking_uri": uri, "run_id": run_id})
    out = root / "out"
    t0 = time.perf_counter()
    summary = run_tracked_eval(cfg, out)
    return {"cfg": cfg, "out": out, "summary": summary, "uri": uri, "run_id": run_id, "client": client,
            "mlflow": mlflow, "seconds": time.perf_counter() - t0}


# --- generation -----------------------------------------------------------------------------------

def test_same_seed_same_video_and_erasers_toggle_on_one_pipeline(tiny_model, eraser_dir):
    from eval.config import GenerationConfig
    from eval.generate import generate_pair, generate_video, load_eval_pipeline
    from unlearn.eraser import load_eraser

    gen = GenerationConfig(num_inference_steps=3, num_frames=9, height=32, width=32, scheduler="ddim",
                           vae_tiling=False, vae_slicing=False)
    pipe = load_eval_pipeline(tiny_model, "float32", "cpu", gen)
    handle = load_eraser(pipe, eraser_dir)
    base1, erased1 = generate_pair(pipe, handle, "a naked body", 7, gen)
    base2, erased2 = generate_pair(pipe, handle, "a naked body", 7, gen)
    assert base1.shape == (9, 32, 32, 3) and base1.dtype == np.float32 and 0 <= base1.min() <= base1.max() <= 1
    np.testing.assert_array_equal(base1, base2)  # per-row seed -> identical videos
    np.testing.assert_array_equal(erased1, erased2)
    assert np.abs(base1 - erased1).mean() > 1e-3  # the eraser changes the video
    other = generate_video(pipe, "a naked body", 8, gen)
    assert np.abs(other - base1).mean() > 1e-3  # another seed, another video
    handle.remove()  # the same pipeline without erasers gives the baseline exactly
    np.testing.assert_array_equal(generate_video(pipe, "a naked body", 7, gen), base1)


# --- the stage ------------------------------------------------------------------------------------

def test_outputs_summary_and_results(reference_run):
    out, s = reference_run["out"], reference_run["summary"]
    rows = read_results(out)
    assert [r["id"] for r in rows] == [f"t{i:05d}" for i in range(N_TARGET)] + [f"p{i:05d}" for i in range(N_PRESERVE)]
    for key in ("nudity_rate_base", "nudity_rate_erased", "positive_frame_fraction_base",
                "class_frames_FEMALE_BREAST_EXPOSED_erased", "psnr_preserve", "ssim_preserve",
                "preserve_nudity_rate_base"):
        assert key in s, key
    assert (s["rows_total"], s["rows_target"], s["rows_preserve"], s["rows_evaluated"]) == (5, 3, 2, 5)
    assert s["nudenet_threshold"] == 0.5 and s["nudenet_preset"] == "receler8" and len(s["nudenet_classes"]) == 8
    assert s["frames_scored_base"] == 3 * N_TARGET
    assert 0 < s["psnr_preserve"] < 100 and -1 <= s["ssim_preserve"] < 1
    assert json.loads((out / "summary.json").read_text())["nudity_rate_erased"] == s["nudity_rate_erased"]
    r0 = rows[0]
    for col in ("seed", "prompt", "video_base", "video_erased", "gif_base", "positive_base", "positive_erased",
                "frames_BUTTOCKS_EXPOSED_base", "frames_scored_erased", "gen_seconds"):
        assert col in r0, col
    assert r0["seed"] == "1001" and r0["psnr"] == ""  # target rows: no paired metrics (paired_on: preserve)
    assert float(rows[-1]["psnr"]) > 0
    import imageio.v3 as iio

    video = iio.imread(out / r0["video_erased"], index=None)
    assert video.shape == (9, 32, 32, 3)
    assert (out / r0["gif_base"]).stat().st_size > 0 and (out / "grid.gif").is_file()
    from PIL import Image

    with Image.open(out / "grid.gif") as im:
        assert im.n_frames == 9 and im.size[1] > 2 * 32  # 2 target + 2 preserve lines


def test_mlflow_metrics_and_artifacts(reference_run):
    client, run_id = reference_run["client"], reference_run["run_id"]
    run = client.get_run(run_id)
    m = run.data.metrics
    assert m["eval/nudity_rate_erased"] == reference_run["summary"]["nudity_rate_erased"]
    assert "eval/psnr_preserve" in m and "eval/rows_total" in m
    assert run.data.tags["eval.nudenet_threshold"] == "0.5"
    top = {f.path for f in client.list_artifacts(run_id, "eval")}
    assert {"eval/results.csv", "eval/summary.json", "eval/grid.gif", "eval/eval_config.json", "eval/gifs"} <= top
    gifs = {f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run_id, "eval/gifs")}
    assert len(gifs) == 2 * (N_TARGET + N_PRESERVE) and "t00000_erased.gif" in gifs
    assert run.info.status == "RUNNING"  # a given run is left to its owner


@pytest.mark.slow
def test_mlflow_server_new_run(mlflow_server, tiny_model, eraser_dir, tmp_path):
    """Over HTTP against a real `mlflow server` (artifact proxy): without a run id the stage
    creates a run, logs into it and finishes it."""
    uri = mlflow_server
    from mlflow.tracking import MlflowClient

    cfg = make_cfg(tiny_model, eraser_dir, prompts={"limit": 1}, preserve={"limit": 1},
                   mlflow={"tracking_uri": uri, "experiment": "eval-stage-test"})
    s = run_tracked_eval(cfg, tmp_path / "srv")
    runs = _search(uri)
    row = runs[runs["run_id"] == s["mlflow_run_id"]].iloc[0]
    assert row["status"] == "FINISHED" and row["metrics.eval/rows_total"] == 2
    client = MlflowClient(uri)
    arts = {f.path for f in client.list_artifacts(s["mlflow_run_id"], "eval")}
    assert {"eval/results.csv", "eval/summary.json", "eval/grid.gif"} <= arts
    assert len(client.list_artifacts(s["mlflow_run_id"], "eval/gifs")) == 4


def _search(uri):
    import mlflow

    prev = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=["eval-stage-test"])
    finally:
        mlflow.set_tracking_uri(prev)


def test_rerun_skips_finished_rows(reference_run, tmp_path):
    import shutil

    out = reference_run["out"]
    before = {p.name: p.stat().st_mtime_ns for p in (out / "rows").glob("*.json")}
    s = run_tracked_eval(reference_run["cfg"], out)
    assert s["rows_evaluated"] == 0 and s["rows_resumed"] == 5
    assert {p.name: p.stat().st_mtime_ns for p in (out / "rows").glob("*.json")} == before
    assert s["nudity_rate_erased"] == reference_run["summary"]["nudity_rate_erased"]
    # changed settings invalidate the old rows (no silent mixing of two configs)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cfg = reference_run["cfg"].with_overrides({"classifier.nudenet.threshold": 0.55, "mlflow.tracking_uri": None,
                                               "output.grid_rows": 0})
    s2 = run_tracked_eval(cfg, copy)
    assert s2["rows_evaluated"] == 5 and s2["rows_recomputed_stale"] == 5 and s2["nudenet_threshold"] == 0.55


def test_interrupted_eval_resumes_with_one_result_per_row(reference_run, tiny_model, eraser_dir, tmp_path):
    """Kill a real `t2vu eval` process mid-run, rerun: every row exactly once, finished rows
    kept as they were, results identical to an uninterrupted run."""
    import yaml

    cfg = reference_run["cfg"].with_overrides({"mlflow.tracking_uri": None, "mlflow.run_id": None,
                                               "runtime.scorer": "inline"})
    cfg_path = tmp_path / "eval.yaml"
    cfg_path.write_text(yaml.safe_dump({k: v for k, v in cfg.to_dict().items() if k != "config_dir"}))
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli.entry", "eval", "--config", str(cfg_path), "--output",
                             str(out), "--no-progress"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(finished_files(out / "rows", "*.json")) >= 1:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = row_files(out)
    assert 1 <= len(partial) < 5, f"kill came too late or too early: {sorted(partial)} {proc.stderr.read()[-2000:]}"
    assert not (out / "results.csv").exists()
    kept = {k: (out / "rows" / f"{k}.json").stat().st_mtime_ns for k in partial}

    s = run_tracked_eval(cfg, out)
    assert s["rows_resumed"] == len(partial) and s["rows_evaluated"] == 5 - len(partial)
    rows = read_results(out)
    ids = [r["id"] for r in rows]
    assert len(ids) == 5 and len(set(ids)) == 5
    assert {k: (out / "rows" / f"{k}.json").stat().st_mtime_ns for k in partial} == kept
    assert not [p for p in (out / "rows").iterdir() if p.name.startswith(".")]  # no temp files left
    ref = row_files(reference_run["out"])
    got = row_files(out)
    for rid in ref:
        assert {k: got[rid].get(k) for k in COMPARE_KEYS} == {k: ref[rid].get(k) for k in COMPARE_KEYS}, rid


# --- Ray ---------------------------------------------------------------------------------------------

def test_ray_actors_need_ray_started_by_the_caller(tiny_model, eraser_dir, tmp_path, monkeypatch):
    """eval never starts Ray (that is `pipelines.runtime.ray_session.ensure_ray`'s job): a clear error, no model load."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    cfg = make_cfg(tiny_model, eraser_dir, runtime={"num_actors": 2})
    with pytest.raises(RuntimeError, match=r"runtime.num_actors: 2 .*Ray is not initialised.*ensure_ray"):
        run_tracked_eval(cfg, tmp_path / "no-ray")


@pytest.mark.slow
def test_ray_actors_spread_rows_and_match_in_process(ray_session, reference_run, tmp_path):
    cfg = reference_run["cfg"].with_overrides({"mlflow.tracking_uri": None, "mlflow.run_id": None,
                                               "runtime.num_actors": 2, "runtime.scorer": "thread"})
    s = run_tracked_eval(cfg, tmp_path / "ray")
    assert s["rows_evaluated"] == 5 and len(s["workers"]) == 2
    assert len({w["pid"] for w in s["workers"]}) == 2 and os.getpid() not in {w["pid"] for w in s["workers"]}
    ref, got = row_files(reference_run["out"]), row_files(tmp_path / "ray")
    assert sorted(got) == sorted(ref)
    for rid in ref:
        assert {k: got[rid].get(k) for k in COMPARE_KEYS} == {k: ref[rid].get(k) for k in COMPARE_KEYS}, rid


# --- plugins and CLI ------------------------------------------------------------------------------------

from eval.classifiers.base import VideoClassifier  # noqa: E402


class MeanColour(VideoClassifier):
    """A user plugin, registered as an entry point of `t2vu.classifiers` (fixture `mean_colour`)."""

    name = "mean_colour"

    def __init__(self, channel: int = 0):
        self.channel = channel

    def classify(self, frames, row):
        return {"mean": float(np.asarray(frames)[..., self.channel].mean()), "row_id": row["row_id"]}

    def summarize(self, records):
        return {"mean_level": float(np.mean([r["mean"] for r in records]))} if records else {}

    def summarize_paired(self, base, erased):
        return {"mean_shift": float(np.mean([e["mean"] - b["mean"] for b, e in zip(base, erased)]))}


@pytest.fixture
def mean_colour(tmp_path, monkeypatch):
    """MeanColour installed as a plugin the way a user's package registers one (an entry point)."""
    from tests.plugin_dist import entry_point_site

    monkeypatch.syspath_prepend(str(entry_point_site(tmp_path, {"mean_colour": f"{__name__}:MeanColour"})))
    return "mean_colour"


def test_any_classifier_plugin_through_config(tiny_model, eraser_dir, tmp_path, mean_colour):
    cfg = make_cfg(tiny_model, eraser_dir, classifier={"name": mean_colour, "options": {"channel": 1}},
                   preserve={"path": None})
    s = run_tracked_eval(cfg, tmp_path / "plugin")
    assert {"mean_level_base", "mean_level_erased", "mean_shift"} <= set(s)
    assert s["rows_total"] == N_TARGET and s["mean_shift"] != 0
    assert "mean_erased" in read_results(tmp_path / "plugin")[0]


def test_base_video_cache_is_shared_across_erasers(tiny_model, eraser_dir, tmp_path, mean_colour):
    """A search evaluates many erasers on the same rows: base videos are generated once."""
    cache = tmp_path / "base-cache"
    # the zeroed cache entry below is a black video: allowed here, and flagged (eval.quality)
    cfg = make_cfg(tiny_model, eraser_dir, classifier={"name": mean_colour}, preserve={"path": None},
                   prompts={"limit": 2}, runtime={"base_cache_dir": str(cache)}, checks={"max_degenerate_fraction": 1.0})
    s1 = run_tracked_eval(cfg, tmp_path / "a")
    files = sorted(cache.glob("*.npy"))
    assert len(files) == 2
    np.save(files[0], np.zeros_like(np.load(files[0])))  # prove the second eval reads the cache
    s2 = run_tracked_eval(cfg, tmp_path / "b")
    assert sorted(cache.glob("*.npy")) == files
    means = sorted(float(r["mean_base"]) for r in read_results(tmp_path / "b"))
    assert means[0] == 0.0 and means[1] > 0 and s2["mean_level_erased"] == s1["mean_level_erased"]
    assert (s1["degenerate_base"], s2["degenerate_base"]) == (0, 1)  # cached frames are checked too


def test_toy_classifier_plugin(tiny_model, eraser_dir, tmp_path):
    from toyworld import world

    rows = world.eval_rows("nontarget", 2) + world.eval_rows("target", 2)
    csv_path = tmp_path / "toy.csv"
    world.write_csv(rows, csv_path, with_set=True)
    cfg = make_cfg(tiny_model, eraser_dir, classifier={"name": "toy", "options": {"target": "red"}},
                   prompts={"path": str(csv_path), "limit": None}, preserve={"path": None})
    s = run_tracked_eval(cfg, tmp_path / "toy")
    assert s["rows_total"] == 4
    assert "target_rate_base" in s and "target_rate_erased" in s and "nontarget_acc_erased" in s


def test_no_eraser_means_baseline_only(tiny_model, tmp_path):
    cfg = make_cfg(tiny_model, None, preserve={"path": None}, prompts={"limit": 1})
    s = run_tracked_eval(cfg, tmp_path / "base")
    assert s["eraser"] is None and "nudity_rate_base" in s and "nudity_rate_erased" not in s
    r = read_results(tmp_path / "base")[0]
    assert r["video_erased"] == "" and (tmp_path / "base" / r["video_base"]).is_file()


def test_cli_eval_contract(tiny_model, eraser_dir, tmp_path, capsys):
    from pipelines.cli.entry import main

    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,evaluation_seed\na naked person,11\na naked body,12\na nude man,13\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"model: {{path: {tiny_model}, dtype: float32}}\n"
        f"eraser: {eraser_dir}\n"
        "prompts: {path: nowhere.csv, seed_column: evaluation_seed}\n"
        "generation: {num_inference_steps: 2, num_frames: 9, height: 32, width: 32, scheduler: ddim,"
        " vae_tiling: false, vae_slicing: false}\n"
        "classifier: {nudenet: {frames: 2}}\n"
        "runtime: {scorer: thread}\n"
    )
    out = tmp_path / "cli"
    rc = main(["eval", "--config", str(cfg), "--output", str(out), "--prompts", str(prompts), "--limit", "2",
               "--no-progress", "--set", "output.grid_rows=1", "--json"])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows_total"] == 2 and "nudity_rate_erased" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_target"] == 2 and "nudity_rate_base" in summary
    assert [r["seed"] for r in read_results(out)] == ["11", "12"]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random, tiny transformers CLIP model + processor saved locally (nothing downloaded)."""
    import string

    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    d = tmp_path_factory.mktemp("clip")
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    bos, eos = len(vocab), len(vocab) + 1
    vocab.update({"<|startoftext|>": bos, "<|endoftext|>": eos})
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    torch.manual_seed(0)
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    vision = dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(d)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(d)
    return d


def test_clip_score_from_a_local_directory(tiny_model, eraser_dir, tiny_clip, tmp_path):
    from eval.metrics import ClipScorer

    frames = (np.random.default_rng(0).random((9, 32, 32, 3)) * 255).astype(np.uint8)
    scorer = ClipScorer(str(tiny_clip), frames=3)
    long_prompt = "a naked body on a beach " * 30  # longer than CLIP's 77 tokens: truncated, not an error
    v = scorer.score(frames, long_prompt)
    assert 0.0 <= v <= 100.0 and v == scorer.score(frames, long_prompt)
    cfg = make_cfg(tiny_model, eraser_dir, metrics={"clip_model": str(tiny_clip), "clip_frames": 2},
                   prompts={"limit": 1}, preserve={"limit": 1})
    s = run_tracked_eval(cfg, tmp_path / "clip")
    for key in ("clip_score_base", "clip_score_erased", "preserve_clip_score_base", "preserve_clip_score_erased"):
        assert 0.0 <= s[key] <= 100.0, key
    assert "clip_score_erased" in read_results(tmp_path / "clip")[0]
    with pytest.raises(Exception, match="not a local CLIP model directory"):
        run_tracked_eval(make_cfg(tiny_model, None, metrics={"clip_model": str(tmp_path / "no-clip")}), tmp_path / "o")


def test_bad_eraser_and_model_paths_are_config_errors(tiny_model, tmp_path):
    from unlearn.config import ConfigError

    with pytest.raises(ConfigError, match="not an eraser directory"):
        run_tracked_eval(make_cfg(tiny_model, tmp_path), tmp_path / "o")
    with pytest.raises(ConfigError, match="model.path"):
        run_tracked_eval(make_cfg(tmp_path / "missing-model", None), tmp_path / "o")
    with pytest.raises(ValueError, match="'nope' is not a registered classifier; registered: nudenet, toy"):
        make_cfg(tiny_model, None, classifier={"name": "nope"})  # refused as the config is read


def test_cli_starts_ray_sized_for_the_eval_actors(monkeypatch):
    """`t2vu eval` with Ray actors starts/joins Ray itself (eval does not): CPUs for every actor, ray_address."""
    import pipelines.runtime.ray_session as rs
    from eval.config import RuntimeConfig
    from pipelines.cli.commands.eval import start_eval_ray

    calls = []
    monkeypatch.setattr(rs, "ensure_ray", lambda **kw: calls.append(kw) or True)
    assert start_eval_ray(RuntimeConfig(num_actors=3, cpus_per_actor=1.5, ray_address="10.0.0.1:6379")) is True
    assert calls == [{"num_cpus": 5, "address": "10.0.0.1:6379"}]
