"""The adversarial-training loss options (`loss.adv_target`, `loss.w_anchor_preserve`) on the tiny model: each term is
what its docstring says, computed independently here, it moves the eraser gradients as weighted, and it is absent
when off (`loss.adv_steps` itself: tests/test_attacks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent


def _session(*sets):
    from pipelines.config.pipeline import load_pipeline_config
    from unlearn.session import TrainingSession

    session = TrainingSession(load_pipeline_config(ROOT / "configs" / "tiny.yaml", list(sets)).method())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a zero-initialised eraser is the base model: every preservation term would be 0
        for prm in session.trainable_parameters():
            prm.copy_(torch.randn(prm.shape, generator=gen) * 0.05)
    return session


def _grads(session, losses, key="loss"):
    params = list(session.trainable_parameters())
    return torch.cat([g.flatten() for g in torch.autograd.grad(losses[key], params)])


def _frozen(obj, x, t, e):
    with torch.no_grad(), obj.handle.disabled():
        return obj.spec.velocity(x, t, e).float()


def test_anchor_preservation_is_the_anchor_rows_mse_and_adds_its_weighted_gradient():
    plain = _session()
    batch = plain.batch(0)
    off = plain.objective(batch)
    assert "l_anchor_preserve" not in off  # off by default: no extra rows, no term
    g_off = _grads(plain, off)
    plain.objective.detach()

    session = _session("loss.w_anchor_preserve=2.0")
    obj = session.objective
    on = obj(batch)
    b, k = batch.emb_ref.shape[:2]
    e_anchor = batch.emb_ref[torch.arange(b), torch.arange(b) % k]  # row i: anchor i mod K, unperturbed
    with torch.no_grad():
        want = F.mse_loss(obj.spec.velocity(batch.x_c, batch.t_c, e_anchor).float(),
                          _frozen(obj, batch.x_c, batch.t_c, e_anchor))
    assert float(want) > 0
    assert float(on["l_anchor_preserve"]) == pytest.approx(float(want), rel=1e-4)
    for key in ("l_unlearn", "l_preserve", "l_localize"):  # the other terms do not see the extra rows
        assert float(on[key]) == pytest.approx(float(off[key]), rel=1e-4, abs=1e-7)
    assert float(on["loss"]) == pytest.approx(float(off["loss"]) + 2.0 * float(want), rel=1e-4)
    g_on, g_anchor = _grads(session, on), _grads(session, obj(batch), "l_anchor_preserve")
    assert g_anchor.norm() > 0
    torch.testing.assert_close(g_on, g_off + 2.0 * g_anchor, rtol=1e-3, atol=1e-6)
    obj.detach()


@pytest.mark.parametrize("start", ["reference", "concept"])
@pytest.mark.parametrize("target", ["reference", "own-negative"])
def test_adversarial_target_is_set_by_the_reference_the_attack_started_from(start, target):
    sets = ["loss.adv_steps=2", "loss.adv_budget=0.5", f"loss.adv_from={start}"]
    session = _session(*sets, f"loss.adv_target={target}")
    obj = session.objective
    batch = session.batch(0)
    b, k = batch.emb_ref.shape[:2]
    v_c = _frozen(obj, batch.x_c, batch.t_c, batch.emb_c)
    e_adv = obj._adversarial(batch, v_c, batch.x_c.device)  # deterministic: delta starts at 0, no sampling
    refs = torch.stack([_frozen(obj, batch.x_c, batch.t_c, batch.emb_ref[:, j]) for j in range(k)], 1)  # [B, K, ...]
    eta = obj.loss_cfg.eta
    v_s = refs[torch.arange(b), torch.arange(b) % k] if start == "reference" else refs.mean(1)  # where it started
    goal = v_s if target == "reference" else v_s - eta * (v_c - v_s)
    negative = refs.mean(1) - eta * (v_c - refs.mean(1))  # the unlearning target (adv_target: negative)
    with torch.no_grad():
        v_adv = obj.spec.velocity(batch.x_c, batch.t_c, e_adv).float()
    losses = obj(batch)
    assert float(losses["l_adv"]) == pytest.approx(float(F.mse_loss(v_adv, goal)), rel=1e-4)
    if target == "own-negative" and start == "concept":  # the references' mean is where it started
        torch.testing.assert_close(goal, negative)
        obj.detach()
        return
    l_goal, l_neg = float(F.mse_loss(v_adv, goal)), float(F.mse_loss(v_adv, negative))
    assert abs(l_goal - l_neg) > 0.2 * l_neg  # another goal than the unlearning target, not a rounding away
    g_ref = _grads(session, obj(batch), "l_adv")
    obj.detach()

    session = _session(*sets)  # the default target: the negatively guided one, other gradients
    losses = session.objective(batch)
    assert float(losses["l_adv"]) == pytest.approx(float(F.mse_loss(v_adv, negative)), rel=1e-4)
    g_neg = _grads(session, session.objective(batch), "l_adv")
    assert (g_ref - g_neg).norm() > 0.1 * g_neg.norm()
    session.objective.detach()
