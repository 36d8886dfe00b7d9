"""The GPU smoke check's entry-point sequence (build -> plan -> train -> 2-worker Ray Train + DeepSpeed ->
eval -> one search trial with a proxy eval in the training worker and the final eval after fit), run on the CPU with the tiny preset through the shell script; the GPU run itself is manual."""

import json
import subprocess
import sys

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_smoke import model_flops, video_tokens  # noqa: E402

from unlearn.models.architectures import PRESETS  # noqa: E402


@pytest.mark.slow
def test_gpu_smoke_sequence_runs_on_cpu_tiny(tmp_path, ray_env):
    # the distributed and search stages join the session's Ray (RAY_ADDRESS), as they would a cluster's: two local
    # Ray starts less; the script on a GPU box starts its own
    env = {**ray_env, "DS_ACCELERATOR": "cpu", "PYTHON": sys.executable}
    r = subprocess.run(["bash", "benchmarks/gpu_smoke.sh", "--preset", "tiny", "--device", "cpu", "--steps", "2",
                        "--eval-steps", "2", "--workdir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout[-2000:]  # ONE JSON line on stdout
    out = json.loads(lines[0])
    assert out["ok"] is True
    tr = out["train"]
    assert tr["finite"] and tr["step_s"] > 0 and tr["peak_memory_gb"] is None  # CPU: no GPU peak to read
    assert tr["plan_fits"] is True and tr["plan_allocated_peak_gb"] >= 0 and tr["mfu"] is None  # tiny: ~0 GB
    d = out["distributed"]
    assert d["finite"] and d["world_size"] == 2 and d["zero_stage"] == 2 and d["step_s"] > 0
    assert len(d["peak_memory_gb_per_rank"]) == 2 and d["plan_allocated_peak_gb"] > 0
    ev = out["eval"]
    assert ev["rows"] == 2 and ev["videos"] == 4 and ev["seconds_per_video"] > 0
    se = out["search"]  # the proxy eval ran in the training worker (on its transformer), the final after fit()
    assert se["proxy_evals"] >= 1 and se["proxy_rows"] == 2 and se["proxy_device"] == "cpu"
    assert se["final_evals"] == 1 and se["final_rows"] == 2 and se["plan_peak_gb_per_gpu"] > 0
    assert se["plan_peak_phase"].startswith("proxy eval")
    assert out["video_tokens"] == 3 * 4 * 4  # 9x32x32 through the tiny VAE (4x spatial, 4x temporal), 2x2 patches
    # the run went through the real entry points and left their outputs
    assert (tmp_path / "train" / "eraser" / "eraser_config.json").is_file()
    assert (tmp_path / "dist" / "eraser" / "eraser_config.json").is_file()
    # the budget came first, one line per stage that then ran, and the JSON carries it next to the stage seconds
    err = r.stderr.splitlines()
    budget_at = [i for i, l in enumerate(err) if l.startswith("[gpu_smoke] budget ")]
    runs_at = [i for i, l in enumerate(err) if l.startswith("[gpu_smoke] ") and ": " in l and " budget" not in l
               and l.split()[1].rstrip(":") in out["stage_seconds"]]
    b = out["budget"]
    assert set(b["stages"]) == set(out["stage_seconds"]) and b["target_s"] == 300
    assert max(i for i in budget_at) < min(i for i in runs_at if "build" not in err[i])  # tiny: built first
    for name, v in b["stages"].items():
        assert any(l.startswith(f"[gpu_smoke] budget {name}: {v['tflop']:g} TFLOP") for l in err), name
    assert b["stages"]["train"]["tflop"] > 0 and b["stages"]["eval"]["tflop"] > 0
    cfg = (tmp_path / "train" / "config.yaml").read_text()
    assert "xt_source: trajectory" in cfg and "gradient_checkpointing: true" in cfg and "autocast: bf16" in cfg


def test_flop_model_at_the_real_geometry():
    """CogVideoX-2B at 49x480x720: 17,550 video + 226 text tokens; 3 rows without grad, 2 with."""
    cfg = PRESETS["cogvideox-2b"]["transformer"]
    assert video_tokens(cfg, 49, 480, 720, 8, 4) == 17550
    d, n, layers = 1920, 17776, 30
    fwd_row = layers * (2 * n * 12 * d * d + 4 * n * n * d)  # one row's forward: ~1.2e14
    assert abs(fwd_row - 1.2e14) / 1.2e14 < 0.02
    flops = model_flops(cfg, 17550, 3, 2)
    # a grad row costs more than its forward twice (attention backward is 2x) and less than the 3x of
    # trained weights (the frozen backbone computes no weight gradients)
    assert 3 * fwd_row + 2 * 2 * fwd_row < flops < 3 * fwd_row + 2 * 3 * fwd_row
    assert 0.9e15 < flops < 1.1e15


def test_wan_flop_model_at_the_real_geometry():
    """Wan2.1-T2V-1.3B at 81x480x832: 21 x 30 x 52 = 32,760 video tokens, 512 text tokens."""
    cfg = PRESETS["wan2.1-t2v-1.3b"]["transformer"]
    nv = video_tokens(cfg, 81, 480, 832, 8, 4)
    assert nv == 32760
    d, f, nt, layers = 1536, 8960, 512, 30
    fwd_row = layers * (2 * (nv * (6 * d * d + 2 * d * f) + nt * 2 * d * d) + 4 * nv * nv * d + 4 * nv * nt * d)
    assert model_flops(cfg, nv, 1, 0, text_tokens=nt) == fwd_row
    # self-attention over 32,760 tokens dominates: 4 Nv^2 D x 30 = 2.0e14 of ~2.8e14 (linear layers 8.2e13)
    assert 2.6e14 < fwd_row < 3.0e14


def test_the_budget_sizes_eval_and_search_to_five_minutes_on_one_h100():
    """CogVideoX-2B shape on one H100 (40% of 989 TFLOP/s): training's FLOPs are the plan's step count x steps plus
    the trajectory pool; at the shipped eval's 50 sampler steps the budget is over 5 minutes, so the eval steps come
    down until it fits, and the eval stage's FLOPs are 4 videos of that many steps (pipelines/plan/flops.py)."""
    import argparse

    from smoke_budget import TARGET_S, size_to_fit, training_flops, video_flops
    from gpu_smoke import GEOMETRY, TRAIN_CONFIG, train_overrides

    from pipelines.plan import flops as F
    from pipelines.plan.memory_check import load_plan_config, make_request
    from pipelines.plan.search_cost import step_flops
    from unlearn.models.architectures import resolve_architecture

    a = argparse.Namespace(preset="cogvideox-2b", device="cuda", steps=4, eval_steps=50, mask_layers=None, search=True,
                           mfu=0.4, peak_tflops=989.0, proxy_every=2)
    arch = resolve_architecture("/nonexistent", "cogvideox-2b")
    single = train_overrides(a, Path("/nonexistent"), Path("/tmp/cache"))
    said: list[str] = []
    b = size_to_fit(a, arch, TRAIN_CONFIG, single, None, GEOMETRY["cogvideox-2b"], said.append)
    assert b["total_s"] <= TARGET_S and 2 <= a.eval_steps < 50 and a.search
    assert said and said[-1].endswith(f"--eval-steps {a.eval_steps}")
    method, pipeline = load_plan_config(TRAIN_CONFIG, single)
    req = make_request(method, pipeline, mode="train", world_size=1, gpu_memory_gb=80)
    nv, _ = arch.token_counts(49, 480, 720)
    assert nv == 17550
    pool = 5 * 2 * F.forward_flops(arch, nv, 2)  # 2 concept + 2 preserve prompts + "" x 2 sampler steps x a CFG forward
    assert training_flops(TRAIN_CONFIG, single, 1, arch) == pytest.approx(4 * sum(step_flops(req, arch).values()) + pool)
    assert b["stages"]["train"]["tflop"] == pytest.approx(training_flops(TRAIN_CONFIG, single, 1, arch) / 1e12, rel=1e-3)
    assert b["stages"]["eval"]["tflop"] == pytest.approx(4 * video_flops(arch, 49, 480, 720, a.eval_steps) / 1e12, rel=1e-3)
    one = b["stages"]["eval"]["tflop"] / 4 / a.eval_steps  # per sampler step: a CFG forward of 2 rows (+ text, VAE)
    assert one > 2 * F.forward_flops(arch, nv, 1) / 1e12
