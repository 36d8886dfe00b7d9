"""What a search costs before it runs (issue 22): the FLOP formulas of `pipelines.plan.flops` against
torch's own count of a tiny CogVideoX and a tiny Wan transformer, and `t2vu plan --mode tune`'s
`search_cost` (its parts, its assumptions, the proxy evals only where a scheduler reads them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils import flop_counter as fc

from pipelines.plan import flops as F
from unlearn.models.architectures import Architecture

ROOT = Path(__file__).resolve().parent.parent
SEARCH_2B = ROOT / "configs" / "search" / "cogvideox-2b-nudity-gpu.yaml"
aten = torch.ops.aten
# torch counts SDPA with the fused CUDA kernels' formulas (backward: 5 matmuls, the scores recomputed); the CPU
# flash kernel F.sdpa dispatches to here is not in its registry: count it with the same formulas.


def _sdpa(query, key, value, *args, out_val=None, **kwargs):
    return fc.sdpa_flop_count(query.shape, key.shape, value.shape)


def _sdpa_backward(grad_out, query, key, value, *args, out_val=None, **kwargs):
    return fc.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


_sdpa._get_raw = _sdpa_backward._get_raw = True  # they take the tensors (FlopCounterMode passes them as they are)
CPU_SDPA = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward}
TOL = 0.02  # what the formulas leave out: the patch embedding's input gradient in the counted backward (~1%)


def _tiny(family: str):
    """(model, Architecture from its config, inputs, video tokens, text tokens): 9 frames at 32x32 of a 4x VAE."""
    from diffusers import CogVideoXTransformer3DModel, WanTransformer3DModel

    torch.manual_seed(0)
    nt, t = 8, torch.tensor([10])
    if family == "cogvideox":
        m = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
                                        time_embed_dim=32, text_embed_dim=24, num_layers=2, sample_width=8,
                                        sample_height=8, sample_frames=9, max_text_seq_length=nt)
        x = torch.randn(2, 3, 4, 8, 8)  # [rows, latent frames, C, h, w]
        cls = "CogVideoXTransformer3DModel"
    else:
        m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                  out_channels=4, text_dim=24, freq_dim=32, ffn_dim=64, num_layers=2, rope_max_seq_len=32)
        x = torch.randn(2, 4, 3, 8, 8)  # [rows, C, latent frames, h, w]
        cls = "WanTransformer3DModel"
    m.eval().requires_grad_(False)
    arch = Architecture("test", transformer={**dict(m.config), "_class_name": cls}, text_encoder={}, vae={},
                        text_tokens=nt)
    inputs = {"hidden_states": x, "encoder_hidden_states": torch.randn(2, nt, 24), "timestep": t.repeat(2)}
    return m, arch, inputs, 3 * 4 * 4, nt


@pytest.mark.parametrize("family", ["cogvideox", "wan"])
def test_flop_formulas_match_torch_counting_a_tiny_transformer(family):
    m, arch, inputs, nv, nt = _tiny(family)
    with torch.no_grad(), fc.FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as fwd:
        m(**inputs)
    expected = F.forward_flops(arch, nv, rows=2, text_tokens=nt)
    assert fwd.get_total_flops() == pytest.approx(expected, rel=TOL)
    parts = F.transformer_forward(arch, nv, nt)
    assert parts["attention"] > 0.1 * sum(parts.values())  # the attention term is really under test at this size

    # frozen weights, gradient into the activations only (what reaches the erasers): the counted backward
    x = inputs["hidden_states"].clone().requires_grad_(True)
    with fc.FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as both:
        out = m(**{**inputs, "hidden_states": x}).sample
        out.float().square().mean().backward()
    backward = both.get_total_flops() - fwd.get_total_flops()
    assert backward == pytest.approx(F.frozen_backward_flops(arch, nv, rows=2, text_tokens=nt), rel=TOL)


def test_capture_flops_match_the_counted_text_columns():
    from unlearn.attention import text_column_probs

    b, h, nv, nt, d = 2, 3, 40, 7, 16
    arch = Architecture("test", transformer={"num_attention_heads": h, "attention_head_dim": d, "num_layers": 1,
                                             "max_text_seq_length": nt}, text_encoder={}, vae={})
    q, k = torch.randn(b, h, nv, d), torch.randn(b, h, nt, d)
    with fc.FlopCounterMode(display=False) as count:
        text_column_probs(q, k, 0.25, lse=torch.zeros(b, h, nv), chunk=16)
    assert count.get_total_flops() == F.capture_flops(arch, nv, b, layers=1)


def _plan(capsys, *extra) -> dict:
    from pipelines.cli.entry import main

    assert main(["plan", "--config", str(SEARCH_2B), "--gpu-memory", "80", *extra]) == 0
    out = capsys.readouterr().out
    assert "Search cost (modelled):" in out
    return json.loads(out.strip().splitlines()[-1])["search_cost"]


def test_plan_prints_the_search_cost_of_the_shipped_gpu_search(capsys):
    c = _plan(capsys)
    assert set(c["parts_gpu_hours"]) == {"training", "proxy_evals", "final_evals", "baselines", "base_videos",
                                         "text_cache"}
    assert c["gpu_hours"] == pytest.approx(sum(c["parts_gpu_hours"].values()), abs=0.05)
    assert c["assumptions"]["mfu"] == 0.4 and c["assumptions"]["gpu_peak_tflops"] == 989.0
    assert c["cluster"] == {"trials": 16, "concurrent_trials": 2, "workers_per_trial": 4, "gpus": 8}
    assert c["per_trial"]["proxy_evals"] == 0 and c["parts_gpu_hours"]["proxy_evals"] == 0  # Optuna reads none
    assert c["per_trial"]["final_videos"] == 32  # 16 rows of the prompts and of the preserve set
    step = c["per_trial"]["step_tflop_parts"]
    assert step["recompute"] == step["forward_2"] and step["capture"] < 0.05 * step["forward_1"]

    half = _plan(capsys, "--mfu", "0.2")  # half the utilisation: twice the GPU-hours
    assert half["gpu_hours"] == pytest.approx(2 * c["gpu_hours"], rel=0.01)
    asha = _plan(capsys, "--set", "search.algorithm=asha")  # ASHA reads proxies: 4 a trial (steps 100..400)
    assert asha["per_trial"]["proxy_evals"] == 4 and asha["parts_gpu_hours"]["proxy_evals"] > 0
    assert asha["proxy_note"] is None and c["proxy_note"].startswith("proxy evals skipped")
    # issue 22: T5 is encoded once (the text-cache fill), not per video, and no eval but the SAFREE baseline (it
    # encodes token-edited prompts) loads it; the 8 GPUs hold 2 trials x 4 workers, so the eval pool is off
    ld, t5 = c["pipeline_loads"], c["pipeline_loads"]["gb_text_encoder"]
    assert ld["pooled"] is False and t5 > 9
    # 16 trials x 4 actors, + the negprompt baseline's 4 (its negative prompt is cached too)
    assert ld["gb_read_before"] - ld["gb_read"] == pytest.approx((16 * 4 + 4) * t5, rel=2e-3)
    assert asha["pipeline_loads"]["gb_read_before"] - asha["pipeline_loads"]["gb_read"] == pytest.approx(
        (16 * 4 + 4 + 16 * 4) * t5, rel=2e-3)  # + 4 proxies a trial, each with T5 beside the training backbone before


def test_what_the_hours_leave_out_is_named_not_silently_omitted(capsys):
    """A robust search (an objective attack, bank rounds, a gate) does work after each trial's training that the
    model does not count: the plan names each part (JSON `left_out`, one printed line each) instead."""
    c = _plan(capsys)
    assert c["left_out"] == []  # the shipped search: everything it runs is counted
    robust = _plan(capsys, "--set", "bank={rounds: 2, pairs: 4}", "--set",
                   "search.objective.attack={config: ../attack/cogvideox-2b-nudity.yaml, attacks: [softprompt]}")
    assert robust["gpu_hours"] == c["gpu_hours"]  # the same counted parts...
    left = robust["left_out"]  # ...and what they leave out, by name
    assert len(left) == 2 and left[0].startswith("search.objective.attack: attacks ['softprompt']")
    assert left[1].startswith("bank: 2 rounds x (4 pairs x 2 restarts x 180 attack steps + 40 training steps)")
    from pipelines.cli.entry import main

    assert main(["plan", "--config", str(SEARCH_2B), "--gpu-memory", "80", "--set", "gate={strength: 3.0}"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("NOT in these hours:")]
    assert printed == ["NOT in these hours: gate: the probe's base-model trajectories and training per trial, on one "
                       "GPU after its training"]


def test_bad_assumptions_are_one_line_errors(capsys):
    from pipelines.cli.entry import main

    assert main(["plan", "--config", str(SEARCH_2B), "--gpu-memory", "80", "--mfu", "1.5"]) == 2
    assert "--mfu 1.5: must be in (0, 1]" in capsys.readouterr().err


def test_a_search_the_cost_cannot_count_still_plans(capsys):
    from pipelines.cli.entry import main

    assert main(["plan", "--config", str(ROOT / "configs" / "search" / "toy.yaml")]) == 0  # a CPU search: no GPU-hours
    out = capsys.readouterr().out
    assert "Search cost: not modelled (distributed.use_gpu is false" in out
    assert json.loads(out.strip().splitlines()[-1])["search_cost"]["gpu_hours"] is None
    # the shipped search without a row limit: its prompt CSVs are placeholders, so nothing to count (says which field)
    assert main(["plan", "--config", str(SEARCH_2B), "--gpu-memory", "80", "--set", "search.objective.limit=null"]) == 0
    assert "set search.objective.limit: N" in capsys.readouterr().out
