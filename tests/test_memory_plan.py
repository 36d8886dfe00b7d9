"""`t2vu plan`: the memory plan of the shipped real-model configs, the refusal of a config that
cannot fit (exit 3, the fix named), the architecture source (model directory over preset), and the
plan's terms against what the real code allocates on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines.cli.entry import main
from pipelines.plan.memory_check import EXIT_WONT_FIT, make_request, plan_request
from unlearn.config import EraserTrainingConfig, load_eraser_training_config

ROOT = Path(__file__).resolve().parent.parent
CFG_2B = ROOT / "configs" / "cogvideox-2b-nudity.yaml"
CFG_5B = ROOT / "configs" / "cogvideox-5b-nudity.yaml"
SEARCH_2B = ROOT / "configs" / "search" / "cogvideox-2b-nudity-gpu.yaml"


def plan_cli(capsys, *argv) -> tuple[int, dict, str, str]:
    rc = main(["plan", *map(str, argv)])
    out = capsys.readouterr()
    last = out.out.strip().splitlines()[-1]
    return rc, json.loads(last), out.out, out.err


@pytest.mark.parametrize("config,gb", [(CFG_2B, 80), (CFG_5B, 80), (CFG_5B, 141), (SEARCH_2B, 141)])
def test_shipped_configs_plan_before_download(capsys, config, gb):
    assert "/path/to/" in yaml.safe_load(config.read_text())["model"]["path"]  # a placeholder: nothing downloaded
    rc, s, out, _ = plan_cli(capsys, "--config", config, "--gpu-memory", gb)
    assert rc == 0 and s["fits"] is True and s["gpu_memory_gb"] == gb
    assert s["architecture"].startswith("preset cogvideox-")
    assert {"backbone weights", "optimizer state", "forward 1 activations", "forward 2 saved activations",
            "attention-capture results"} <= set(s["terms"])
    resident = sum(s["terms"][k] for k in ("backbone weights", "eraser parameters", "eraser gradients",
                                           "optimizer state", "CUDA context"))
    steps = ("attention-capture results", "forward 2 saved activations", "eraser energy records", "backward recompute + grads")
    assert s["phases"]["forward 2 + backward"] == pytest.approx(resident + sum(s["terms"][k] for k in steps), abs=0.01)
    assert s["peak_gb_per_gpu"] == pytest.approx(max(s["phases"].values()), abs=1e-3)
    assert "term" in out and "peak per GPU" in out
    if config == SEARCH_2B:  # the final eval loads a whole pipeline per GPU; no proxy (multi-objective Optuna)
        assert s["mode"] == "tune" and "proxy eval weights" not in s["terms"]
        # under ASHA (which reads proxies) a proxy eval loads the VAE on rank 0; no trial's eval loads T5-XXL (4.76B
        # params): the search fills the text-embedding cache with every eval prompt before its trials
        _, a, _, _ = plan_cli(capsys, "--config", config, "--gpu-memory", gb, "--set", "search.algorithm=asha")
        assert a["terms"]["proxy eval weights"] == pytest.approx(215_583_907 * 2 / 2**30, abs=1e-3)
        # ... but the shipped SAFREE baseline runs T5 itself (token-edited prompts): its eval actors hold it
        assert s["terms"]["final eval weights"] == pytest.approx(
            (1_693_783_872 + 4_762_310_656 + 215_583_907) * 2 / 2**30, abs=1e-3)
        _, n, _, _ = plan_cli(capsys, "--config", config, "--gpu-memory", gb, "--set", "search.objective.baselines=[negprompt]")
        assert n["terms"]["final eval weights"] == pytest.approx((1_693_783_872 + 215_583_907) * 2 / 2**30, abs=1e-3)


def test_backbone_weights_are_the_public_parameter_counts(capsys):
    from unlearn.models.architectures import PRESET_PARAMETERS, PRESETS, Architecture

    for name, counts in PRESET_PARAMETERS.items():  # the constants are what the meta-device build counts
        arch = Architecture(f"preset {name}", **PRESETS[name])
        assert tuple(arch.meta_parameter_counts().values()) == counts
    _, s2, _, _ = plan_cli(capsys, "--config", CFG_2B, "--gpu-memory", 80)
    _, s5, _, _ = plan_cli(capsys, "--config", CFG_5B, "--gpu-memory", 80)
    # bf16; 2B (no RoPE) also holds the sincos positional-embedding buffer: (226 + 13 x 30 x 45) x 1920
    assert s2["terms"]["backbone weights"] == pytest.approx((1_693_783_872 + 17_776 * 1920) * 2 / 2**30, abs=1e-3)
    assert s5["terms"]["backbone weights"] == pytest.approx(5_570_283_072 * 2 / 2**30, abs=1e-3)


def test_a_config_that_cannot_fit_exits_3_naming_term_and_fix(capsys):
    rc, s, _, err = plan_cli(capsys, "--config", CFG_5B, "--gpu-memory", 8)
    assert rc == EXIT_WONT_FIT and s["fits"] is False
    assert s["dominant_term"] == "backbone weights" and "backbone weights" in err
    # several GPUs: sharding the frozen backbone over them is named first (it keeps the videos whole)
    assert s["fix"]["setting"].startswith("--set distributed.shard_backbone=true")
    rc, s, _, err = plan_cli(capsys, "--config", CFG_5B, "--gpu-memory", 8, "--world-size", 1)
    assert rc == EXIT_WONT_FIT and s["terms"]["backbone weights"] > 0.95 * 8  # the weights alone overflow the card
    assert "shard_backbone" not in err and "GPU with more memory" in err  # one GPU: nothing to shard over

    # Without checkpointing, one process with 4+4 rows: the saved activations dominate; the fix is named.
    rc, s, _, err = plan_cli(capsys, "--config", CFG_5B, "--gpu-memory", 80, "--world-size", 1,
                             "--set", "train.gradient_checkpointing=false")
    assert rc == EXIT_WONT_FIT and s["dominant_term"] == "forward 2 saved activations"
    assert "train.gradient_checkpointing=true" in err and s["fix"]["setting"] == "--set train.gradient_checkpointing=true"
    assert s["fix"]["fits"] is True and s["fix"]["peak_gb"] < 0.95 * 80

    # Checkpointing on but too many rows for the card: the fix is a smaller batch, and it does fit.
    rc, s, _, err = plan_cli(capsys, "--config", CFG_5B, "--gpu-memory", 24, "--world-size", 1)
    assert rc == EXIT_WONT_FIT and "Fix: --set train.batch_size=" in err and s["fix"]["fits"] is True


def test_config_errors_exit_2_naming_the_field(capsys):
    rc = main(["plan", "--config", str(CFG_2B), "--set", "model.architecture=null"])
    assert rc == 2 and "model.architecture" in capsys.readouterr().err
    rc = main(["plan", "--config", str(CFG_2B), "--set", "model.num_frames=50"])
    assert rc == 2 and "model.num_frames=50" in capsys.readouterr().err


def test_a_model_directory_wins_over_the_preset(tmp_path, capsys):
    from unlearn.models.tiny import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny")
    cfg = yaml.safe_load(CFG_5B.read_text())
    cfg["model"].update(path=str(model), architecture="cogvideox-5b", num_frames=9, height=32, width=32)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc, s, _, _ = plan_cli(capsys, "--config", path, "--gpu-memory", 80)
    assert rc == 0 and s["architecture"] == f"directory {model}"
    # the tiny transformer's 57,360 parameters in bf16, not 42 blocks x hidden 3072
    from pipelines.plan.memory_check import load_plan_config

    method, pipeline = load_plan_config(path)
    plan, _ = plan_request(make_request(method, pipeline, mode="train", gpu_memory_gb=80))
    assert next(t for t in plan.terms if t.name == "backbone weights").bytes == 57360 * 2


def test_trajectory_pool_term_is_what_the_source_stores(tmp_path):
    """The host term equals the bytes of a real TrajectorySource pool (tiny model, CPU)."""
    from unlearn.session import TrainingSession

    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data["train"].update(xt_source="trajectory", trajectory={"num_inference_steps": 2, "pool_size": 2}, device="cpu",
                         cache_dir=str(tmp_path / "emb"))
    cfg = EraserTrainingConfig.model_validate(data)
    plan, _ = plan_request(make_request(cfg, mode="train"))
    term = next(t for t in plan.terms if t.name == "trajectory pool")
    assert term.where == "host"
    session = TrainingSession(cfg, device="cpu")
    stored = sum(s.numel() * s.element_size() for s, _ in session.source.pool.values())
    assert term.bytes == stored


def test_preflight_checks_only_cuda_runs_and_refuses_before_loading():
    import io

    from pipelines.plan.memory_check import load_plan_config
    from pipelines.plan.preflight import preflight

    cfg = load_eraser_training_config(ROOT / "configs" / "tiny.yaml")
    assert cfg.train.device == "auto"
    on_cpu = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": "cpu"})})
    assert preflight(on_cpu, mode="train", gpu_memory_gb=1e-3) is None  # a CPU run is never checked
    assert preflight(cfg, mode="train") is None  # auto without a visible GPU: nothing to compare against
    # The 5B config on a 24 GB card: `t2vu train` (one process, 4+4 rows) would refuse, with the table and the fix.
    method, pipeline = load_plan_config(CFG_5B)
    err = io.StringIO()
    assert preflight(method, mode="train", gpu_memory_gb=24, stream=err) == EXIT_WONT_FIT
    assert "error: will not fit" in err.getvalue() and "Fix: --set train.batch_size=" in err.getvalue()
    assert preflight(method, pipeline, mode="distributed", gpu_memory_gb=80, stream=err) is None  # 4 GPUs x 80 GB: fits


@pytest.mark.slow
def test_prediction_matches_a_measured_step(tmp_path):
    """One real fused training step on CPU (the benchmark's method, small size): the plan's peak within 15%."""
    from benchmarks.memory_plan_check import run_size

    size = dict(name="test-small", heads=8, layers=6, frames=13, height=160, width=240, batch=1, preserve=1,
                ckpt=False, rope=True)
    r = run_size(size, tmp_path)
    assert r["measured_gb"] > 0.25  # a step big enough for 15% to mean something
    assert abs(r["ratio"] - 1) <= 0.15, r


# --- Wan -------------------------------------------------------------------------------------------

WAN = {name: ROOT / "configs" / "wan" / f"{name}-nudity.yaml"
       for name in ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-ti2v-5b", "wan2.2-t2v-a14b")}


@pytest.mark.parametrize("name,extra,gb", [
    ("wan2.1-t2v-1.3b", [], 80), ("wan2.2-ti2v-5b", [], 80), ("wan2.1-t2v-14b", [], 141),
    ("wan2.2-t2v-a14b", [], 141),
])
def test_wan_presets_plan_before_download(capsys, name, extra, gb):
    from unlearn.models.architectures import PRESET_PARAMETERS

    assert "/path/to/" in yaml.safe_load(WAN[name].read_text())["model"]["path"]
    rc, s, _, _ = plan_cli(capsys, "--config", WAN[name], "--gpu-memory", gb, *extra)
    preset = extra[-1].split("=")[-1] if extra else name
    assert rc == 0 and s["fits"] is True and s["architecture"] == f"preset {preset}"
    experts = 2 if preset == "wan2.2-t2v-a14b" else 1  # both A14B experts resident, one eraser set each
    assert s["terms"]["backbone weights"] == pytest.approx(experts * PRESET_PARAMETERS[preset][0] * 2 / 2**30, abs=1e-3)
    heads, layers = {"wan2.1-t2v-1.3b": (12, 30), "wan2.2-ti2v-5b": (24, 30)}.get(preset, (40, 40))
    d = heads * 128
    assert s["terms"]["eraser parameters"] == pytest.approx(experts * layers * (2 * d * 128 + 128 + d) * 4 / 2**30, abs=1e-3)
    assert s["peak_gb_per_gpu"] == pytest.approx(max(s["phases"].values()), abs=1e-3)


def test_wan_plan_refuses_what_cannot_fit_naming_the_fix(capsys):
    # Wan2.1-14B in one process (4+4 rows) without checkpointing: the saved activations dominate.
    rc, s, _, err = plan_cli(capsys, "--config", WAN["wan2.1-t2v-14b"], "--gpu-memory", 141, "--world-size", 1,
                             "--set", "train.gradient_checkpointing=false")
    assert rc == EXIT_WONT_FIT and s["dominant_term"] == "forward 2 saved activations"
    assert "Fix: --set train.gradient_checkpointing=true" in err
    # Wan2.2-TI2V-5B at 121x704x1280, 4+4 rows on a 24 GB card: checkpointing is on; fewer rows/frames fix it.
    rc, s, _, err = plan_cli(capsys, "--config", WAN["wan2.2-ti2v-5b"], "--gpu-memory", 24, "--world-size", 1)
    assert rc == EXIT_WONT_FIT and "Fix: --set" in err and s["fix"]["fits"] is True
    # A family that contradicts the architecture is a config error naming both fields.
    rc = main(["plan", "--config", str(WAN["wan2.1-t2v-1.3b"]), "--set", "model.architecture=cogvideox-2b"])
    assert rc == 2 and "model.family" in capsys.readouterr().err


def _wan_inputs(**kw):
    from pipelines.plan.memory_plan import PlanInputs

    base = dict(hidden=32, heads=2, head_dim=16, layers=3, text_len=12, params_transformer=0, params_text_encoder=0,
                params_vae=0, vae_channels=3, pos_embed_elems=0, video_tokens=48, latent_elems=0, concept_rows=1,
                references=1, preserve_rows=1, eraser_rank=4, eraser_blocks=(0, 1, 2), capture_layers=0, attn_chunk=64,
                weight_bytes=4, act_bytes=4, checkpointing=False, family="wan", ffn_dim=80)
    return PlanInputs(**{**base, **kw})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("site", ["wan", "wan-attn1"])
@pytest.mark.parametrize("expand", [False, True])
def test_wan_block_accounting_is_what_autograd_saves(dtype, site, expand):
    """The Wan formulas equal the bytes autograd's saved-tensor hooks see in a real diffusers Wan forward
    with erasers attached (tensors deduplicated by storage, parameters excluded), for 1, 2 and 3 blocks."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from unlearn.models.memory_terms import eraser_one
    from unlearn.models.wan_memory import WanBlocks
    from unlearn.eraser import EraserSet, attach
    from unlearn.models.wan import WanSelfAttnSpec, WanSpec

    dt = getattr(torch, dtype)
    for layers in (1, 2, 3):
        torch.manual_seed(0)
        tr = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                   out_channels=4, text_dim=32, freq_dim=32, ffn_dim=80, num_layers=layers,
                                   cross_attn_norm=True, rope_max_seq_len=64).to(dt).requires_grad_(False)
        keep = set(tr._keep_in_fp32_modules)  # as from_pretrained(dtype=bf16) loads it: these stay fp32
        for name, mod in tr.named_modules():
            if keep & set(name.split(".")):
                mod.float()
        for name, p in tr.named_parameters():
            if keep & set(name.split(".")):
                p.data = p.data.float()
        spec = (WanSpec if site == "wan" else WanSelfAttnSpec)(tr, FlowMatchEulerDiscreteScheduler(shift=3.0),
                                                               text_len=12, expand_timesteps=expand)
        erasers = EraserSet.for_spec(spec, 4)
        handle = attach(tr, erasers)
        params = {p.data_ptr() for m in (tr, erasers) for p in list(m.parameters()) + list(m.buffers())}
        saved: dict[int, int] = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        x, t, e = torch.randn(2, 4, 3, 8, 8), torch.rand(2) * 1000, torch.randn(2, 12, 32)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), handle.recording(0):
            spec.velocity(x, t, e)
        inputs = _wan_inputs(layers=layers, eraser_blocks=tuple(range(layers)), act_bytes=dt.itemsize,
                             eraser_site="attn1" if site == "wan-attn1" else "attn2", expand_timesteps=expand)
        g = layers
        predicted = (WanBlocks.saved_first(inputs, 2) + WanBlocks.saved_block(inputs, 2) * (g - 1)
                     + WanBlocks.saved_model(inputs, 2, g) + eraser_one(inputs, 2) * g)
        assert sum(saved.values()) == pytest.approx(predicted, rel=0.01), (layers, sum(saved.values()), predicted)


@pytest.mark.slow
def test_wan_prediction_matches_a_measured_step(tmp_path):
    """One real fused training step of a Wan transformer on CPU (per-token timesteps, as Wan 2.2 TI2V): within 15%."""
    from benchmarks.memory_plan_check import run_size

    size = dict(name="test-wan", family="wan", heads=4, layers=3, ffn=2048, frames=13, height=256, width=448, batch=1,
                preserve=1, ckpt=False, expand=True)
    r = run_size(size, tmp_path)
    assert r["measured_gb"] > 0.25
    assert abs(r["ratio"] - 1) <= 0.15, r


def test_wan_eval_terms_load_umt5_and_the_wan_vae():
    """A trial's proxy eval loads UMT5-XXL + the Wan VAE (2.2 TI2V-5B: its 48-channel VAE) where the text-embedding
    cache is not filled, the VAE alone where it is (a search's evals); the final eval a whole pipeline, both
    experts for A14B."""
    from dataclasses import replace

    from pipelines.plan.memory_check import load_plan_config, plan_inputs
    from pipelines.plan.memory_plan import EvalShape, plan_memory
    from unlearn.models.architectures import PRESET_PARAMETERS

    for preset, experts in (("wan2.2-ti2v-5b", 1), ("wan2.2-t2v-a14b", 2)):
        method, pipeline = load_plan_config(WAN["wan2.2-ti2v-5b"], [f"model.architecture={preset}"])
        x, arch = plan_inputs(make_request(method, pipeline, mode="train", gpu_memory_gb=141))
        nv = arch.token_counts(81, 704, 1280)[0]
        ev = EvalShape(2, 2, nv, 81, 704, 1280, True, False, text_encoder=True)
        plan = plan_memory(replace(x, proxy_eval=ev, final_eval=replace(ev, with_transformer=True)))
        terms = {t.name: t for t in plan.terms}
        t, umt5, vae = PRESET_PARAMETERS[preset]
        assert terms["proxy eval weights"].bytes == (umt5 + vae) * 2 and "UMT5 + Wan VAE" in terms["proxy eval weights"].note
        assert terms["final eval weights"].bytes == (experts * t + umt5 + vae) * 2
        cached = plan_memory(replace(x, proxy_eval=replace(ev, text_encoder=False),
                                     final_eval=replace(ev, with_transformer=True, text_encoder=False)))
        terms = {t.name: t for t in cached.terms}
        assert terms["proxy eval weights"].bytes == vae * 2 and "filled cache" in terms["proxy eval weights"].note
        assert terms["final eval weights"].bytes == (experts * t + vae) * 2


@pytest.mark.parametrize("batch", [2, 4])
def test_adversarial_training_is_planned(batch):
    """loss.adv_steps: the B adversarial rows (and, with loss.w_anchor_preserve, B anchor rows) join forward 2, and
    the inner attack's pass is its own phase; one pass of the real inner attack (tiny CogVideoX, grad w.r.t. the
    concept rows' text embedding, erasers on) saves what the plan counts for it, within 15%."""
    from dataclasses import replace

    import torch

    from pipelines.config.pipeline import load_pipeline_config
    from pipelines.plan.memory_check import plan_inputs
    from pipelines.plan.memory_plan import ADV, F2, plan_memory
    from unlearn.session import TrainingSession

    method = load_pipeline_config(ROOT / "configs" / "tiny.yaml", ["loss.adv_steps=2", f"train.batch_size={batch}"]).method()
    x, _ = plan_inputs(make_request(method, None, mode="train", gpu_memory_gb=80))
    assert x.adv_steps == 2 and not x.anchor_preserve and x.concept_rows == batch
    plain = plan_memory(replace(x, adv_steps=0))
    assert ADV not in plain.phases and not any(t.phase == ADV for t in plain.terms)
    f2 = lambda p: {t.name: t.bytes for t in p.terms if t.phase == F2}  # noqa: E731
    for anchors, extra in ((False, 1), (True, 2)):  # forward 2 = the plain step with B (2B) more rows
        plan = plan_memory(replace(x, anchor_preserve=anchors))
        assert f2(plan) == f2(plan_memory(replace(x, adv_steps=0, preserve_rows=x.preserve_rows + extra * batch)))
    plan = plan_memory(x)
    assert plan.phases[ADV] > plain.phases[F2] - sum(f2(plain).values())  # the resident terms + the pass
    assert plan_memory(replace(x, adv_steps=7)).phases[ADV] == plan.phases[ADV]  # one pass at a time
    predicted = sum(t.bytes for t in plan.terms if t.name in ("adv pass saved activations", "adv pass eraser activations"))

    session = TrainingSession(method)
    obj, b = session.objective, session.batch(0)
    params = {p.untyped_storage().data_ptr() for m in (obj.spec.transformer, obj.erasers)
              for p in list(m.parameters()) + list(m.buffers())}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    delta = torch.zeros_like(b.emb_c, requires_grad=True)  # what ErasureObjective._adversarial differentiates
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        obj.spec.velocity(b.x_c, b.t_c, b.emb_c + delta)
    obj.detach()
    assert sum(saved.values()) == pytest.approx(predicted, rel=0.15), (sum(saved.values()), predicted)


def test_the_fix_names_the_term_it_shrinks_and_what_it_costs(capsys):
    """The refusal says which term the fix shrinks (before -> after) and what the run gives up for it."""
    rc, s, _, err = plan_cli(capsys, "--config", CFG_5B, "--gpu-memory", 16, "--world-size", 1)
    fix = s["fix"]
    assert rc == EXIT_WONT_FIT and fix["fits"] is True and "--set model.num_frames=" in fix["setting"]
    frames = int(fix["setting"].split("model.num_frames=")[1].split()[0])
    assert fix["shrinks"] == "forward 2 saved activations" and fix["term_gb_after"] < fix["term_gb"]
    assert (f'shrinks "forward 2 saved activations" {fix["term_gb"]:.1f} -> {fix["term_gb_after"]:.1f} GB, '
            f'peak -> {fix["peak_gb"]} GB; costs: ') in err
    assert f"trains on videos of {frames} frames instead of 49" in err and "rows per step instead of 4 + 4" in err
    assert fix["costs"] == [c for c in fix["costs"] if c in err] and len(fix["costs"]) == 2

    # checkpointing costs time, not videos
    _, s, _, err = plan_cli(capsys, "--config", CFG_5B, "--gpu-memory", 80, "--world-size", 1,
                            "--set", "train.gradient_checkpointing=false")
    assert s["fix"]["costs"] == ["each block's forward runs again in backward (slower steps)"]
    assert "costs: each block's forward runs again in backward" in err
