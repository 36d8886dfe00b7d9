"""The fused training step, in plain PyTorch (Ray Train + DeepSpeed wrap it unchanged).

Per step, two transformer forwards instead of one per quantity:
1. no grad, erasers off, batched over [concept | references | preserved]:
   v_c, v_ref (mean over anchors), v_preserve_original, and the attention of
   the concept rows (-> localization mask);
2. with grad, erasers on, batched over [concept | preserved]:
   the erased predictions and each block's eraser output.
Then  L = w_u * MSE(v_E(c), v_ref - eta (v_c - v_ref)) + w_p * MSE(v_E(p), v(p)) + w_l * L_loc.
Optional rows of forward 2 (off by default; the batch is then exactly the above): adversarial concept rows
(loss.adv_steps; + w_adv * MSE(v_E(E + delta), a target set by loss.adv_target)) and the anchors' unperturbed
rows at the concept x_t (loss.w_anchor_preserve; + w * MSE(v_E(x_c, E(anchor)), v(x_c, E(anchor)))).
The naive alternative (a second model copy, one forward per quantity, the full
attention matrix) is `unlearn.naive`; the benchmark compares them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from unlearn.attention import AttentionCapture
from unlearn.config import LossConfig
from unlearn.eraser import EraserSet, attach
from unlearn.losses import localization_loss, negative_guided_target, preserve_loss, unlearn_loss
from unlearn.masks import localization_mask


@dataclass
class StepBatch:
    x_c: torch.Tensor  # [B, F, C, H, W] noisy latents of concept rows
    t_c: torch.Tensor  # [B]
    emb_c: torch.Tensor  # [B, L, D]
    emb_ref: torch.Tensor  # [B, K, L, D] references (K = 1 for empty/paired, #anchors for anchors)
    sel: torch.Tensor  # [B, L] concept-token selector
    x_p: torch.Tensor  # [P, F, C, H, W] preserved rows (P may be 0)
    t_p: torch.Tensor
    emb_p: torch.Tensor

    def to(self, device) -> "StepBatch":
        return StepBatch(**{k: v.to(device) for k, v in self.__dict__.items()})


class ErasureObjective(nn.Module):
    """Erasers (the only registered, trainable submodule) + the frozen backbone they hook into."""

    def __init__(self, spec, eraser_set: EraserSet, loss_cfg: LossConfig, autocast: str = "none"):
        super().__init__()
        self.erasers = eraser_set
        # Not registered as a submodule on purpose: optimizers, DeepSpeed and
        # state_dict() only ever see the erasers; the backbone stays frozen and whole.
        self.__dict__["spec"] = spec
        self.loss_cfg = loss_cfg
        self.autocast = autocast
        self.sequence_parallel = None  # set by unlearn.sequence_parallel.enable_sequence_parallel
        spec.transformer.requires_grad_(False)
        self.handle = attach(spec.transformer, eraser_set)
        self.capture = (
            AttentionCapture(spec.capture_modules(spec.transformer), spec.capture_processor, loss_cfg.mask_layers,
                             chunk=loss_cfg.attn_chunk)
            if loss_cfg.w_localize > 0 else None
        )

    def _amp(self, device):
        if self.autocast == "bf16":
            return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, batch: StepBatch) -> dict[str, torch.Tensor]:
        spec, cfg = self.spec, self.loss_cfg
        b, k = batch.emb_ref.shape[:2]
        p = batch.x_p.shape[0]
        dev = batch.x_c.device

        # 1) frozen predictions (one batched forward, erasers off, no graph)
        x = torch.cat([batch.x_c, batch.x_c.repeat_interleave(k, 0), batch.x_p])
        t = torch.cat([batch.t_c, batch.t_c.repeat_interleave(k, 0), batch.t_p])
        e = torch.cat([batch.emb_c, batch.emb_ref.flatten(0, 1), batch.emb_p])
        cap = self.capture.capturing(b) if self.capture is not None else contextlib.nullcontext()
        with torch.no_grad(), self.handle.disabled(), cap, self._amp(dev):
            v = spec.velocity(x, t, e).float()
        v_c, v_ref_k, v_p0 = v.split([b, b * k, p])
        v_ref_k = v_ref_k.view(b, k, *v_ref_k.shape[1:])
        v_ref = v_ref_k.mean(1)
        target = negative_guided_target(v_c, v_ref, cfg.eta)
        v_own = own_reference(v_ref_k)  # each row's own reference prediction (adv_from reference, anchor rows)

        # adversarial concept rows (loss.adv_steps > 0): the inner attack on the concept embeddings
        adv = cfg.adv_steps > 0
        x_adv, t_adv, e_adv = (batch.x_c, batch.t_c, self._adversarial(batch, v_c, dev)) if adv else (
            batch.x_c[:0], batch.t_c[:0], batch.emb_c[:0])
        a = x_adv.shape[0]
        # the anchors' unperturbed rows at the concept x_t (loss.w_anchor_preserve > 0)
        anc = cfg.w_anchor_preserve > 0
        e_anc = own_reference(batch.emb_ref) if anc else batch.emb_c[:0]
        n_anc = e_anc.shape[0]

        # 2) erased predictions (one batched forward, with grad into the erasers only); the hooks
        # record only the per-token eraser energy of the b concept rows, and only if L_loc needs it
        rows = b if self.capture is not None else 0
        xs, ts, es = [batch.x_c, x_adv, batch.x_p], [batch.t_c, t_adv, batch.t_p], [batch.emb_c, e_adv, batch.emb_p]
        if anc:  # appended after the preserved rows: without it the batch is exactly the plain step's
            xs, ts, es = xs + [batch.x_c], ts + [batch.t_c], es + [e_anc]
        with self.handle.recording(rows, cfg.localize_reduction) as eraser_out, self._amp(dev):
            v_e = spec.velocity(torch.cat(xs), torch.cat(ts), torch.cat(es)).float()
        v_e_c, v_e_a, v_e_p, v_e_anc = v_e.split([b, a, p, n_anc])

        l_u = unlearn_loss(v_e_c, target)
        l_p = preserve_loss(v_e_p, v_p0) if p else v_e.new_zeros(())
        out = {"l_unlearn": l_u, "l_preserve": l_p}
        if adv:
            # v_s: the frozen prediction of the reference the inner attack started from
            v_s = v_own if cfg.adv_from == "reference" else v_ref
            adv_goal = {"negative": target, "reference": v_s,
                        "own-negative": negative_guided_target(v_c, v_s, cfg.eta)}[cfg.adv_target]
            out["l_adv"] = unlearn_loss(v_e_a, adv_goal)
        if anc:
            out["l_anchor_preserve"] = preserve_loss(v_e_anc, v_own)
        if self.capture is not None:
            layout = spec.token_layout(batch.x_c.shape[1:])
            sp = self.sequence_parallel  # capture, mask and energy records: this rank's tokens; shares summed
            args = (self.capture.probs(), batch.sel, layout.video_grid, cfg.mask_threshold)
            mask, n_bg, frac = sp.localization_mask(*args) if sp is not None else (localization_mask(*args)[0], None, None)
            l_l = localization_loss([eraser_out[i] for i in sorted(eraser_out)], mask, n_bg)
            l_l = sp.reduce_sum(l_l) if sp is not None else l_l
            eraser_out.clear()  # the graph holds what backward needs; drop the step's references now
            out["mask_fraction"] = (mask.mean() if frac is None else frac).detach()
        else:
            l_l = v_e.new_zeros(())
        out["l_localize"] = l_l
        out["loss"] = cfg.w_unlearn * l_u + cfg.w_preserve * l_p + cfg.w_localize * l_l
        if adv:
            out["loss"] = out["loss"] + cfg.w_adv * out["l_adv"]
        if anc:
            out["loss"] = out["loss"] + cfg.w_anchor_preserve * out["l_anchor_preserve"]
        return out

    def _adversarial(self, batch: StepBatch, v_c: torch.Tensor, dev) -> torch.Tensor:
        """E(concept) (or, with adv_from: reference, a reference) + delta after `adv_steps` normalised gradient steps
        on MSE(v_E(x_c, E + delta), v_c) (the erased model made to predict the concept again), each row's delta
        projected onto its ball of radius adv_budget x ||E(concept) - E(reference)||."""
        cfg = self.loss_cfg
        # adv_from reference: one anchor per row, the attack's benign starting point
        ref = own_reference(batch.emb_ref).float() if cfg.adv_from == "reference" else batch.emb_ref.float().mean(1)
        start = ref if cfg.adv_from == "reference" else batch.emb_c.float()
        radius = cfg.adv_budget * (batch.emb_c.float() - ref).flatten(1).norm(dim=1).clamp_min(1e-8)  # [B]
        shape = (-1,) + (1,) * (batch.emb_c.dim() - 1)
        delta = torch.zeros_like(batch.emb_c, dtype=torch.float32, requires_grad=True)
        for _ in range(cfg.adv_steps):
            with self._amp(dev):
                v = self.spec.velocity(batch.x_c, batch.t_c, (start + delta).to(batch.emb_c.dtype))
            (g,) = torch.autograd.grad(torch.nn.functional.mse_loss(v.float(), v_c), [delta])
            if self.sequence_parallel is not None:  # each rank holds the part through its shard: sum them
                self.sequence_parallel.all_reduce_(g)
            with torch.no_grad():
                g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
                delta -= cfg.adv_step_size * radius.view(shape) * g
                delta *= (radius / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(shape)
        return (start + delta.detach()).to(batch.emb_c.dtype)

    def detach(self) -> None:
        """Remove hooks and processors from the backbone."""
        self.handle.remove()
        if self.capture is not None:
            self.capture.remove()


def own_reference(per_row: torch.Tensor) -> torch.Tensor:
    """[B, K, ...] per-reference values -> [B, ...]: row i's own reference, anchor i mod K (one rule for the
    adversarial start, its target and the anchor rows; the index is made on the values' device)."""
    b, k = per_row.shape[:2]
    rows = torch.arange(b, device=per_row.device)
    return per_row[rows, rows % k]


class NonFiniteLossError(FloatingPointError):
    pass


def check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    bad = {k: float(v.detach()) for k, v in losses.items() if not torch.isfinite(v).all()}
    if bad:
        raise NonFiniteLossError(
            f"Non-finite loss at step {step}: {bad}. Training stopped; no eraser was written for this step. "
            "Lower train.lr or loss.eta, or enable train.grad_clip."
        )
