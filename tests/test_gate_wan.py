"""The content gate on the toy Wan (flow matching): its x0 is the scheduler's own x0, WanPipeline's two CFG calls
share one gate and one correction, and a probe trained on Wan latents ([B, C, F, H, W]) reads red."""

from __future__ import annotations

import pytest
import torch

RED = ["a red square moving left", "a red bar moving up", "a red pillar moving down", "a red triangle moving right"]
OTHER = ["a green square moving left", "a blue bar moving up", "a yellow pillar moving down",
         "a purple triangle moving right"]


@pytest.fixture(scope="module")
def wan():
    from tests.toy_eval import toy_eval_context

    return toy_eval_context(config="toy-wan.yaml")


def _cfg(**kw):
    from unlearn.gate_config import GateConfig

    return GateConfig(**{"concept_prompt": "red", "toward_prompts": ["green", "blue"], "strength": 10.0,
                         "positive": RED, "negative": OTHER, "trajectory_steps": 8, "guidance": 2.0,
                         "probe_steps": 150, **kw})


def _gate(ctx, **kw):
    from unlearn.gates import new_gate

    return new_gate(_cfg(**kw), ctx.spec, ctx.encode(["red", "green", "blue"]).float())


def test_gate_x0_on_wan_is_the_schedulers_x0(wan):
    """x0 = x_t - (t / 1000) v: what FlowMatchEulerDiscreteScheduler (the toy's) steps through and what
    UniPCMultistepScheduler (real Wan 2.1's, integer timesteps) converts the model output to."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
    from diffusers.utils.torch_utils import randn_tensor

    ctx = wan["ctx"]
    gate = _gate(ctx)
    assert gate.settings["prediction_type"] == "flow" and gate.probe.channel_axis == 1  # [B, C, F, H, W]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, *ctx.latent_shape()), generator=gen)
    emb = ctx.encode(["a red bar moving up"])
    euler = FlowMatchEulerDiscreteScheduler.from_config(ctx.spec.scheduler.config, stochastic_sampling=True)
    unipc = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    for sched in (euler, unipc):
        sched.set_timesteps(20)
        for i in (0, 7, 19):
            t = sched.timesteps[i].reshape(1)
            with torch.no_grad():
                v = ctx.spec.velocity(x, t.float(), emb).float()
            ours = gate.x0_hat(x, v, t)
            sched._step_index = i
            if sched is euler:  # its stochastic step: prev = (1 - s_next) x0 + s_next noise, noise from the generator
                prev = sched.step(v, t, x, generator=torch.Generator().manual_seed(1), return_dict=False)[0]
                noise = randn_tensor(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
                s_next = float(sched.sigmas[i + 1])
                theirs = (prev - s_next * noise) / (1 - s_next)
                tol = 1e-4
            else:  # integer timesteps: t / 1000 is sigma rounded to 1e-3
                theirs = sched.convert_model_output(v, sample=x)
                tol = 1e-3 * float(v.abs().max())
            assert torch.allclose(ours, theirs, atol=tol), (type(sched).__name__, i, float((ours - theirs).abs().max()))


def test_wan_pipeline_cfg_calls_share_one_gate_and_one_correction(wan):
    """WanPipeline calls the transformer twice per step (conditional, then unconditional) on the same latents:
    the second call takes the first's gate and correction (one correction pass per step); an attacker's forwards
    (with grad) never pair."""
    from unlearn.eraser import EraserSet, attach

    ctx, pipe = wan["ctx"], wan["pipe"]
    es = EraserSet.for_spec(ctx.spec, rank=2, blocks=[0])
    es.gate = _gate(ctx, threshold=-50.0)  # gate ~1: always corrects
    es.meta.extra = {"gate": es.gate.settings}
    calls = []
    directions = es.gate._directions
    es.gate._directions = lambda *a: calls.append(1) or directions(*a)
    handle = attach(pipe.transformer, es)
    try:
        with torch.inference_mode():  # as eval.generate runs it
            pipe(prompt="a green bar moving up", num_inference_steps=3, guidance_scale=2.0, num_frames=9, height=32,
                 width=32, output_type="latent", generator=torch.Generator().manual_seed(0))
        assert len(calls) == 3, "one correction pass per step, shared by the two CFG calls"
        x = torch.randn((1, *ctx.latent_shape()), generator=torch.Generator().manual_seed(2))
        t = torch.tensor([500.0])
        e_c, e_u = ctx.encode(["a green bar moving up"]), ctx.encode([""])
        with torch.no_grad():
            v_c, v_u = ctx.spec.velocity(x, t, e_c), ctx.spec.velocity(x, t, e_u)
            with handle.disabled():
                b_c, b_u = ctx.spec.velocity(x, t, e_c), ctx.spec.velocity(x, t, e_u)
        assert len(calls) == 4 and torch.allclose(v_c - b_c, v_u - b_u, atol=1e-5), "same x: one correction"
        ctx.spec.velocity(x, t, e_c.requires_grad_(True))
        ctx.spec.velocity(x, t, e_u)
        assert len(calls) == 6, "with grad (an attack) every call gets its own gate"
    finally:
        handle.remove()


@pytest.mark.slow
def test_probe_trained_on_wan_latents_reads_red(wan):
    """~20 s idle (50 s at load 6): trained on 4 red and 8 other toy Wan trajectories (10 steps); on held-out prompts'
    last state the gate is higher on red content than elsewhere. Weaker than on the toy CogVideoX with this little
    data (a held-out green triangle scores 0.6): a separation check, not a tuned Wan gate."""
    from unlearn.gate_training import build_gate

    ctx = wan["ctx"]
    negative = OTHER + ["a yellow bar moving left", "a yellow triangle moving up", "a green pillar moving right",
                        "a purple square moving down"]
    cfg = _cfg(threshold=0.0, trajectory_steps=10, probe_steps=300, negative=negative)
    gate, record = build_gate(cfg, ctx.spec, ctx.encode, ctx.latent_shape(), torch.no_grad)
    assert record["train_acc"] > 0.8, record

    def gate_of(prompt: str) -> float:
        gen = torch.Generator().manual_seed(0)
        states, times = ctx.spec.sample_trajectory(ctx.encode([prompt]), ctx.encode([""]), ctx.latent_shape(), 10,
                                                   2.0, gen)
        x, t = states[9], times[9:10]
        with torch.no_grad():
            v = ctx.spec.velocity(x, t, ctx.encode([prompt]))
            return float(gate.gate(gate.x0_hat(x, v, t), t))

    red = [gate_of(p) for p in ("a red triangle moving down", "a red square moving up", "a red bar and a green square")]
    other = [gate_of(p) for p in ("a yellow square moving right", "a blue pillar moving left", "a green triangle moving up")]
    assert min(red) > 0.7 and sum(red) / 3 > sum(other) / 3 + 0.3, (red, other)
