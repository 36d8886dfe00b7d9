"""Wan-specific checks (the shared contract runs in tests/test_family_contract.py): prompt encoding and
flow matching as WanPipeline does them, the eraser site variant, refusals, and a tiny Wan trained and
evaluated end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.cli import entry as cli
from unlearn.config import ConfigError
from unlearn.models.families import check_family, family_of_model_dir, spec_class
from unlearn.models.wan import WanSelfAttnSpec, WanSpec

ROOT = Path(__file__).resolve().parent.parent
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def wan_dir(tiny_wan_dir):
    return tiny_wan_dir  # tests/conftest.py: built once per session


@pytest.fixture(scope="module")
def pipe(wan_dir):
    return WanSpec.load_pipeline(wan_dir, "float32")


def test_prompt_embeddings_equal_the_pipelines(wan_dir, pipe):
    prompts = ["a naked  body", "a red car on a street at night"]
    n = WanSpec.text_len_of(wan_dir)
    assert n == 16 == WanSpec.from_pipeline(pipe).text_len
    ours = WanSpec.encode_prompts(WanSpec.load_tokenizer(wan_dir), WanSpec.load_text_encoder(wan_dir), prompts, n)
    ref, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=n, device="cpu")
    assert ours.shape == (2, n, 32) and torch.allclose(ours, ref, atol=1e-6)
    ids = pipe.tokenizer(prompts[0], add_special_tokens=True).input_ids
    assert ours[0, len(ids):].abs().sum() == 0, "padding positions are zero, as WanPipeline makes them"


def test_flow_matching_noise_timesteps_and_trajectory(wan_dir):
    spec = WanSpec.from_pretrained(wan_dir)
    assert spec.prediction_type == "flow" and spec.shift == 3.0
    g = torch.Generator().manual_seed(0)
    t = spec.sample_timesteps(4096, g)
    assert t.dtype == torch.float32 and 0 <= t.min() and t.max() <= 1000
    # shifted sigmas: median of s = 3u / (1 + 2u) at u = 0.5 is 0.75
    assert abs(float(t.median()) / 1000 - 0.75) < 0.03
    x0, eps = torch.randn(2, 16, 3, 4, 4), torch.randn(2, 16, 3, 4, 4)
    tt = torch.tensor([250.0, 900.0])
    xt = spec.add_noise(x0, eps, tt)
    s = (tt / 1000).view(-1, 1, 1, 1, 1)
    assert torch.allclose(xt, (1 - s) * x0 + s * eps)
    # the family's own sampler: states start at N(0, I) and walk the directory scheduler's float timesteps
    emb, unc = torch.randn(2, 16, 32), torch.zeros(1, 16, 32)
    states, times = spec.sample_trajectory(emb, unc, spec.latent_shape(9, 32, 32), 4, 5.0, torch.Generator().manual_seed(1))
    sched = type(spec.scheduler).from_config(spec.scheduler.config)
    sched.set_timesteps(4)
    assert states.shape == (4, 2, 16, 3, 4, 4) and times.dtype == torch.float32
    assert torch.equal(times, sched.timesteps.float())
    assert torch.equal(states[0], torch.randn((2, 16, 3, 4, 4), generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("scheduler", ["UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"])
def test_trajectory_sampling_at_real_size_on_meta(scheduler):
    """Trajectory x_t of Wan 2.2 A14B's geometry (81x480x832, one block of its real width) on `meta`: the schedule stays
    on the CPU and only the model's inputs meet the device. Before, the timesteps were made on the model's device and
    read back with float(t), which `meta` refuses (and which syncs a GPU once per step)."""
    import diffusers
    from diffusers import WanTransformer3DModel

    from unlearn.models.architectures import PRESETS, init_kwargs

    cfg = init_kwargs(WanTransformer3DModel, PRESETS["wan2.2-t2v-a14b"]["transformer"])
    with torch.device("meta"):
        tr = WanTransformer3DModel(**{**cfg, "num_layers": 1}).requires_grad_(False)
    sched = getattr(diffusers, scheduler)(**({"prediction_type": "flow_prediction", "use_flow_sigmas": True,
                                              "flow_shift": 5.0} if scheduler.startswith("UniPC") else {"shift": 5.0}))
    spec = WanSpec(tr, sched)
    calls = []
    tr.register_forward_hook(lambda m, a, kw, out: calls.append(kw["hidden_states"].shape[0]), with_kwargs=True)
    emb = torch.empty(1, spec.text_len, cfg["text_dim"], device="meta")
    states, times = spec.sample_trajectory(emb, emb, spec.latent_shape(81, 480, 832), 3, 5.0, torch.Generator())
    assert states.shape == (3, 1, 16, 21, 60, 104) and states.device.type == "meta"
    assert times.shape == (3,) and times.device.type == "meta" and calls == [2, 2, 2]  # one CFG pair per step


def test_one_sampler_step_matches_the_pipeline(wan_dir, pipe):
    """The spec's velocity + CFG + scheduler step equals one step of WanPipeline (latent output)."""
    spec = WanSpec.from_pipeline(pipe)
    emb, _ = pipe.encode_prompt(["a naked body"], do_classifier_free_guidance=False, max_sequence_length=16, device="cpu")
    unc, _ = pipe.encode_prompt([""], do_classifier_free_guidance=False, max_sequence_length=16, device="cpu")
    shape = spec.latent_shape(9, 32, 32)
    x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(3))
    out = pipe(prompt_embeds=emb, negative_prompt_embeds=unc, latents=x.clone(), num_inference_steps=1,
               guidance_scale=5.0, num_frames=9, height=32, width=32, output_type="latent").frames
    states, times = spec.sample_trajectory(emb, unc, shape, 1, 5.0, torch.Generator().manual_seed(3))
    sched = type(spec.scheduler).from_config(spec.scheduler.config)
    sched.set_timesteps(1)
    v = spec.velocity(torch.cat([x, x]), times.expand(2), torch.cat([unc, emb]))
    mine = sched.step(v[:1] + 5.0 * (v[1:] - v[:1]), sched.timesteps[0], x, return_dict=False)[0]
    assert torch.equal(states[0], x)
    assert torch.allclose(mine, out, atol=1e-5)


def test_attn1_site_variant_hooks_self_attention_and_runs_on_wan_dirs(wan_dir, tmp_path):
    from unlearn.eraser import EraserSet, load_eraser, save_eraser

    tr = WanSpec.from_pretrained(wan_dir).transformer
    assert WanSpec.eraser_modules(tr) == [b.attn2 for b in tr.blocks]
    assert WanSelfAttnSpec.eraser_modules(tr) == [b.attn1 for b in tr.blocks]
    assert WanSelfAttnSpec.capture_modules(tr) == [b.attn2 for b in tr.blocks]
    assert family_of_model_dir(wan_dir) == "wan"
    check_family(wan_dir, "wan-attn1")  # a site variant runs on its base family's directories
    spec = spec_class("wan-attn1").from_pretrained(wan_dir)
    save_eraser(EraserSet.for_spec(spec, rank=2), tmp_path / "er")
    handle = load_eraser(tr, tmp_path / "er")
    assert all(b.attn1._forward_hooks and not b.attn2._forward_hooks for b in tr.blocks)
    handle.remove()


def test_broken_two_expert_and_image_to_video_dirs_are_refused(wan_dir, tmp_path):
    """Wan 2.2 A14B is supported (tests/test_wan_experts.py); a half-written two-expert directory is not."""
    import shutil

    a14b = Path(shutil.copytree(wan_dir, tmp_path / "a14b"))
    idx = json.loads((a14b / "model_index.json").read_text())
    idx.update(transformer_2=["diffusers", "WanTransformer3DModel"], boundary_ratio=0.875)
    (a14b / "model_index.json").write_text(json.dumps(idx))
    with pytest.raises(FileNotFoundError, match="lacks transformer_2/config.json"):
        WanSpec.check_model_dir(a14b)
    shutil.copytree(a14b / "transformer", a14b / "transformer_2")
    assert WanSpec.check_model_dir(a14b) == a14b
    (a14b / "model_index.json").write_text(json.dumps({**idx, "boundary_ratio": None}))
    with pytest.raises(ConfigError, match="boundary_ratio is not"):
        WanSpec.check_model_dir(a14b)
    i2v = Path(shutil.copytree(wan_dir, tmp_path / "i2v"))
    cfg = json.loads((i2v / "transformer" / "config.json").read_text())
    (i2v / "transformer" / "config.json").write_text(json.dumps({**cfg, "image_dim": 1280, "added_kv_proj_dim": 24}))
    with pytest.raises(ConfigError, match="image-to-video"):
        WanSpec.check_model_dir(i2v)
    with pytest.raises(ConfigError, match="set generation.scheduler: model"):
        WanSpec.eval_scheduler("dpm", {})


def test_tiny_wan_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    rc = cli.main(["make-tiny-model", str(tmp_path / "m"), "--family", "wan"])
    assert rc == 0 and "WanPipeline" in capsys.readouterr().out
    assert family_of_model_dir(tmp_path / "m") == "wan"
    rc = cli.main(["train", "-c", str(ROOT / "configs" / "wan" / "tiny.yaml"), "-o", str(tmp_path / "train"),
                   "--set", f"model.path={tmp_path / 'm'}", "--set", "train.steps=4", "--set", "train.checkpoint_every=2",
                   "--set", "train.xt_source=trajectory", "--set", "train.trajectory.num_inference_steps=3",
                   "--set", "train.trajectory.pool_size=1"])
    assert rc == 0
    meta = json.loads((tmp_path / "train" / "eraser" / "eraser_config.json").read_text())
    assert meta["model_family"] == "wan" and meta["num_blocks"] == 2 and meta["hidden_size"] == 24
    capsys.readouterr()
    rc = cli.main(["eval", "-c", str(ROOT / "configs" / "eval" / "wan-tiny.yaml"), "-o", str(tmp_path / "eval"),
                   "--set", f"model.path={tmp_path / 'm'}", "--set", f"eraser={tmp_path / 'train' / 'eraser'}",
                   "--set", "generation.num_inference_steps=2", "--limit", "2"])
    assert rc == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["degenerate_ok"] and summary["text_token_limit"] == 16
    assert (tmp_path / "eval" / "results.csv").is_file()
