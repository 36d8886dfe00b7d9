"""The content gate (unlearn/gates.py) on the real toy CogVideoX: a trained probe reads red from the model's own
predicted x0 (not from the text), attacks get gradients through it, and it lives in the eraser file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
RED = ["a red square moving left", "a red bar moving up", "a red pillar and a yellow triangle",
       "a blue triangle and a red bar"]
OTHER = ["a green square moving left", "a blue bar moving up", "a yellow pillar and a purple triangle",
         "a purple bar and a green square"]


@pytest.fixture(scope="module")
def toy():
    from tests.toy_eval import toy_eval_context

    t = toy_eval_context(max_text_len=16)
    return {"pipe": t["pipe"], "ctx": t["ctx"], "gen": t["gen"]}


def _gate_cfg(**kw):
    from unlearn.gates import GateConfig

    return GateConfig(**{"concept_prompt": "red", "toward_prompts": ["green", "blue"], "strength": 10.0,
                         "threshold": -2.0, "positive": RED, "negative": OTHER, "trajectory_steps": 10,
                         "probe_steps": 200, **kw})


def _untrained_gated_set(ctx, seed: int = 0):
    """An eraser set (zero erasers: the base model) with a content gate whose probe is randomly initialised."""
    from unlearn.eraser import EraserSet
    from unlearn.gates import ContentGate, gate_settings

    torch.manual_seed(seed)
    prompts = ctx.encode(["red", "green", "blue"]).float().cpu()
    settings = gate_settings(_gate_cfg(threshold=-50.0), ctx.spec, prompts)  # gate ~1 everywhere: always corrects
    es = EraserSet.for_spec(ctx.spec, rank=2, blocks=[1])
    es.meta.extra = {"gate": settings}
    es.gate = ContentGate(settings)
    es.gate.sqrt_a.copy_(ctx.spec._sqrt_a.float())
    es.gate.sqrt_1ma.copy_(ctx.spec._sqrt_1ma.float())
    es.gate.prompts.copy_(prompts)
    return es


def _state(ctx, prompt: str, step: int = 12):
    """A base-model trajectory state of `prompt` (x_t [1, ...], t [1])."""
    gen = torch.Generator().manual_seed(0)
    states, times = ctx.spec.sample_trajectory(ctx.encode([prompt]), ctx.encode([""]), ctx.latent_shape(), 20, 5.0, gen)
    return states[step], times[step:step + 1]


def test_gate_corrects_only_when_attached_and_enabled_and_survives_save_load(toy, tmp_path):
    from unlearn.eraser import attach, load_eraser, read_eraser, save_eraser

    ctx, pipe = toy["ctx"], toy["pipe"]
    x, t = _state(ctx, "a red square moving left")
    emb = ctx.encode(["a green square moving left"])
    with torch.no_grad():
        base = ctx.spec.velocity(x, t, emb)
    es = _untrained_gated_set(ctx)
    handle = attach(pipe.transformer, es)
    try:
        with torch.no_grad():
            gated = ctx.spec.velocity(x, t, emb)
            with handle.disabled():
                off = ctx.spec.velocity(x, t, emb)
        assert torch.equal(off, base), "handle.disabled() must give the base model: the gate is off with the erasers"
        assert float(handle.eraser_set.gate.last_gate.min()) > 0.99
        assert float((gated - base).norm()) > 0.1 * float(base.norm()), "gate ~1 at strength 10: a real correction"
        # CFG batch: the same x_t under two texts shares one gate (the minimum), so guidance keeps the correction
        with torch.no_grad():
            ctx.spec.velocity(torch.cat([x, x]), t.repeat(2), torch.cat([ctx.encode([""]), emb]))
        g = handle.eraser_set.gate.last_gate
        assert g[0] == g[1]
    finally:
        handle.remove()
    with torch.no_grad():
        assert torch.equal(ctx.spec.velocity(x, t, emb), base), "remove() detaches the gate's hook too"

    save_eraser(es, tmp_path / "eraser")
    back = read_eraser(tmp_path / "eraser")
    assert back.gate is not None and back.meta.extra["gate"] == es.meta.extra["gate"]
    for k, v in es.gate.state_dict().items():
        assert torch.equal(back.gate.state_dict()[k], v), k
    handle = load_eraser(pipe, tmp_path / "eraser", allow_other_base=True)  # the two-line load path
    try:
        with torch.no_grad():
            assert torch.allclose(ctx.spec.velocity(x, t, emb), gated, atol=1e-5)
    finally:
        handle.remove()


def test_attack_gradients_flow_through_the_gate(toy):
    """A white-box attacker's embedding gets a gradient through the gate (probe of x0_hat of its own prediction):
    the hooked velocity's gradient differs from the one with the gate's input detached."""
    from unlearn.eraser import attach

    ctx, pipe = toy["ctx"], toy["pipe"]
    x, t = _state(ctx, "a red bar moving up")
    es = _untrained_gated_set(ctx, seed=1)
    es.gate.settings["threshold"] = 0.0  # the sigmoid's steep part: d gate / d text is not ~0
    handle = attach(pipe.transformer, es)
    try:
        emb = ctx.encode(["a blue bar moving up"]).requires_grad_(True)
        (grad,) = torch.autograd.grad(ctx.spec.velocity(x, t, emb).pow(2).sum(), [emb])
        g_fn = es.gate.gate
        es.gate.gate = lambda x0, tt: g_fn(x0.detach(), tt)  # the same gate value, no gradient through it
        emb2 = emb.detach().clone().requires_grad_(True)
        (grad_detached,) = torch.autograd.grad(ctx.spec.velocity(x, t, emb2).pow(2).sum(), [emb2])
    finally:
        handle.remove()
    assert torch.isfinite(grad).all() and float(grad.norm()) > 0
    assert float((grad - grad_detached).norm()) > 1e-4 * float(grad.norm()), "the gate is part of the attacker's graph"


@pytest.mark.slow
def test_trained_probe_reads_red_from_content_not_text(toy):
    """~25 s: the probe trained on 4 red and 4 other base trajectories (gate 0.5 at logit 0); on held-out prompts' late states the gate
    is ~1 on red content and ~0 elsewhere; on a red state it follows what the prediction draws: ~1 under the empty
    text (CFG's other branch), ~0 where the text still repaints it green (the toy recolours at step 14 of 20)."""
    from unlearn.gate_training import build_gate

    ctx = toy["ctx"]
    gate, record = build_gate(_gate_cfg(threshold=0.0), ctx.spec, ctx.encode, ctx.latent_shape(), torch.no_grad)
    assert record["train_acc"] > 0.9

    def gate_of(state_prompt: str, text: str) -> float:
        x, t = _state(ctx, state_prompt, step=14)
        with torch.no_grad():
            v = ctx.spec.velocity(x, t, ctx.encode([text]))
            return float(gate.gate(gate.x0_hat(x, v, t), t))

    red = [gate_of(p, p) for p in ("a red triangle moving down", "a green bar and a red square")]
    other = [gate_of(p, p) for p in ("a yellow square moving right", "a blue pillar and a green triangle")]
    assert min(red) > 0.8 and max(other) < 0.2, (red, other)
    assert gate_of("a red triangle moving down", "") > 0.5
    assert gate_of("a red triangle moving down", "a green triangle moving down") < 0.2


def test_attack_config_gate_plans_a_gated_victim_and_trains_its_probe_once(toy, tmp_path):
    """methods[].gate (eval.attacks.gating): the plan attacks <output>/gates/<label>/eraser under its own victim
    name; the probe is trained once, other inference settings reuse it, an unchanged gate is not redone."""
    import io

    from eval.attacks.gating import ensure_gated, gated_dir
    from eval.attacks.runner import plan_attacks
    from pipelines.config.attack import load_attack_config, load_harness_eval_config
    from unlearn.eraser import EraserSet, read_eraser, save_eraser

    ctx = toy["ctx"]
    save_eraser(EraserSet.for_spec(ctx.spec, rank=2, blocks=[1]), tmp_path / "e")
    gate = {"concept_prompt": "red", "toward_prompts": ["green"], "positive": RED[:1], "negative": OTHER[:1],
            "trajectory_steps": 2, "probe_steps": 5}
    methods = (f"methods=[{{name: eraser, eraser: {tmp_path / 'e'}}}, {{name: eraser, label: gated, eraser: "
               f"{tmp_path / 'e'}, gate: {gate}}}]")
    cfg = load_attack_config(ROOT / "configs" / "attack" / "toy.yaml",
                             [methods, "attacks=[clean, softprompt]", "prompts.limit=2", "preserve.limit=2"])
    plan = plan_attacks(cfg, load_harness_eval_config(cfg), tmp_path / "out")
    target = gated_dir(tmp_path / "out", "gated")
    assert plan.methods["gated"].options["eraser"] == str(target) and "gated" in plan.gates
    victims = {c.method: c.victim for c in plan.cells if c.name == "softprompt-0.5x"}
    assert victims["gated"].startswith(victims["eraser"] + "-gate-")  # its own attacks: made through the gate
    log = io.StringIO()
    rec = ensure_gated(ctx, tmp_path / "e", plan.gates["gated"][1], target, log)
    assert "training" in log.getvalue() and "reused_from" not in rec and read_eraser(target).gate is not None
    stronger = plan.gates["gated"][1].model_copy(update={"strength": 7.0})
    other = gated_dir(tmp_path / "out", "gated-7")
    assert ensure_gated(ctx, tmp_path / "e", stronger, other, log)["reused_from"] == str(target)
    assert read_eraser(other).meta.extra["gate"]["strength"] == 7.0
    mtime = (target / "eraser.safetensors").stat().st_mtime_ns
    ensure_gated(ctx, tmp_path / "e", plan.gates["gated"][1], target, log)  # unchanged: nothing redone
    assert (target / "eraser.safetensors").stat().st_mtime_ns == mtime and log.getvalue().count("training") == 1
