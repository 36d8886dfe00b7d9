"""The committed toy model (`unlearn/assets/toy-model`, `builtin:toy`): layout, loading, quality.

These tests never retrain the committed model: they load it through the real
`CogVideoXPipeline.from_pretrained` and generate a handful of videos (~1 s). One smoke
test runs the build code end to end at toy sizes (1 VAE step, 2 transformer steps) into
a temporary directory, so an API drift in diffusers/transformers shows up here rather
than in the next 15-minute rebuild.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from toyworld import TOY_MODEL_DIR, world
from toyworld.build import GENERATION, QUALITY_BARS, SCHEDULER_CONFIG, TEXT_LEN, generate

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


@pytest.fixture(scope="module")
def pipe():
    from diffusers import CogVideoXPipeline

    torch.set_num_threads(1)
    p = CogVideoXPipeline.from_pretrained(TOY_MODEL_DIR)
    p.set_progress_bar_config(disable=True)
    return p


def test_artifact_layout_is_cogvideox_and_small():
    index = json.loads((TOY_MODEL_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "CogVideoXPipeline"
    for c in COMPONENTS:
        assert (TOY_MODEL_DIR / c).is_dir() and c in index
    files = [p for p in TOY_MODEL_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights), "weights must be safetensors, never pickle"
    assert sum(p.stat().st_size for p in files) < 10 * 2**20
    assert (TOY_MODEL_DIR / "BUILD.md").is_file()


def test_recorded_quality_meets_the_bars():
    q = json.loads((TOY_MODEL_DIR / "toy_quality.json").read_text())
    s = q["summary"]
    for key, bar in QUALITY_BARS.items():
        assert s[key] >= bar, (key, s[key])
    assert s["n_single"] >= 3 * 128 and s["n_two_object"] >= 2 * 128
    gen = q["generation"]
    assert all(gen[k] == v for k, v in GENERATION.items())


def test_loads_with_real_components(pipe):
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from transformers import T5EncoderModel

    from unlearn.models.tokenizer import check_tokenizer

    assert isinstance(pipe.transformer, CogVideoXTransformer3DModel)
    assert isinstance(pipe.vae, AutoencoderKLCogVideoX)
    assert isinstance(pipe.text_encoder, T5EncoderModel)
    assert isinstance(pipe.scheduler, CogVideoXDDIMScheduler)
    assert type(pipe.tokenizer).__name__ == "T5Tokenizer"
    check_tokenizer(pipe.tokenizer, "crimson")
    # every world word is one piece (+ eos), so the concept's token span is found exactly
    for w in world.vocabulary():
        assert len(pipe.tokenizer(w, add_special_tokens=False).input_ids) == 1, w
    assert pipe.transformer.config.max_text_seq_length == TEXT_LEN
    assert pipe.transformer.config.use_rotary_positional_embeddings is False
    for k, v in SCHEDULER_CONFIG.items():
        assert pipe.scheduler.config[k] == v, k
    assert pipe.vae.config.scaling_factor != 1.15258426  # set from the trained latents
    assert pipe.vae_scale_factor_spatial == 4 and pipe.vae_scale_factor_temporal == 4


def test_quick_quality_through_the_pipeline(pipe):
    from eval.classifiers import build_classifier

    rows = (
        world.eval_rows("target", 2, seed=7)
        + world.eval_rows("synonym", 2, seed=7)
        + world.eval_rows("nontarget", 4, seed=7)
        + world.eval_rows("two_nontarget", 2, seed=7)
    )
    frames = generate(pipe, rows, batch_size=len(rows))
    assert frames.shape == (len(rows), world.NUM_FRAMES, world.HEIGHT, world.WIDTH, 3)
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    clf = build_classifier("toy", target="red")
    recs = [clf.classify(f, r) for f, r in zip(frames, rows)]
    single = [r for r in recs if r["n_objects"] == 1]
    assert sum(r["colour_correct"] for r in single) >= 7, [(r["prompt"], r["detected_colours"]) for r in single]
    assert sum(r["shape_correct"] for r in single) >= 6, [(r["prompt"], r["detected_shape"]) for r in single]
    assert sum(r["motion_correct"] for r in single) >= 6, [(r["prompt"], r["detected_motion"]) for r in single]
    assert sum(r["all_named_present"] for r in recs if r["n_objects"] == 2) >= 1
    m = clf.summarize(recs)
    assert m["target_rate"] == 1.0 and m["nontarget_target_rate"] == 0.0


def test_generation_is_seeded(pipe):
    row = world.eval_rows("nontarget", 1, seed=3)
    a = generate(pipe, row)
    b = generate(pipe, row)
    assert np.array_equal(a, b)
    c = generate(pipe, [row[0] | {"seed": row[0]["seed"] + 1}])
    assert not np.array_equal(a, c)


def test_cli_registers_toy_build():
    from pipelines.cli.entry import build_parser

    args = build_parser().parse_args(["toy", "build", "/tmp/x", "--seed", "3", "--vae-steps", "10", "--tf-steps", "20"])
    assert args.dir == "/tmp/x" and args.seed == 3 and args.vae_steps == 10 and args.tf_steps == 20
    assert callable(args.func)


def test_build_smoke_end_to_end(tmp_path):
    """The whole build at toy sizes: trains, saves, reloads through from_pretrained, scores."""
    from diffusers import CogVideoXPipeline

    from toyworld.build import BuildConfig, build

    cfg = BuildConfig(vae_steps=1, vae_check_limit=4, tf_steps=2, tf_warmup=1, tf_batch=4, tf_eval_every=0, eval_n=1)
    q = build(tmp_path / "m", cfg, log=lambda msg: None)
    assert (tmp_path / "m" / "toy_quality.json").is_file()
    assert q["summary"]["n_single"] == 3 and q["summary"]["n_two_object"] == 2
    assert q["build"]["vae"]["steps"] == 1 and q["build"]["transformer"]["steps"] == 2
    CogVideoXPipeline.from_pretrained(tmp_path / "m")
