"""The naive step the fused step is measured against (tests and `benchmarks/train_step.py`).

What a straightforward port of the seed does: one forward per quantity (concept,
each reference, preserved, erased concept, erased preserved), the "original"
model optionally as a *second copy* of the transformer, and the attention mask
from the full joint softmax matrix. Same losses, same inputs: used to prove the
fused step computes the same numbers, and to measure what fusing saves.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from unlearn.attention import AttentionCapture
from unlearn.config import LossConfig
from unlearn.eraser import EraserSet, attach
from unlearn.losses import localization_loss, negative_guided_target, preserve_loss, unlearn_loss
from unlearn.masks import localization_mask
from unlearn.step import StepBatch


class NaiveObjective(nn.Module):
    def __init__(self, spec, eraser_set: EraserSet, loss_cfg: LossConfig, original_spec=None):
        super().__init__()
        self.erasers = eraser_set
        self.__dict__["spec"] = spec
        self.__dict__["original"] = original_spec if original_spec is not None else spec
        self.loss_cfg = loss_cfg
        spec.transformer.requires_grad_(False)
        self.handle = attach(spec.transformer, eraser_set)
        orig = self.original
        self.capture = (
            AttentionCapture(orig.capture_modules(orig.transformer), orig.capture_processor, loss_cfg.mask_layers,
                             full_matrix=True)
            if loss_cfg.w_localize > 0 else None
        )

    def _frozen(self, x, t, e):
        same = self.original is self.spec
        with torch.no_grad(), (self.handle.disabled() if same else contextlib.nullcontext()):
            return self.original.velocity(x, t, e).float()

    def forward(self, batch: StepBatch) -> dict[str, torch.Tensor]:
        cfg = self.loss_cfg
        b, k = batch.emb_ref.shape[:2]
        p = batch.x_p.shape[0]
        cap = self.capture.capturing(b) if self.capture is not None else contextlib.nullcontext()
        with cap:
            v_c = self._frozen(batch.x_c, batch.t_c, batch.emb_c)
        v_ref = torch.stack([self._frozen(batch.x_c, batch.t_c, batch.emb_ref[:, j]) for j in range(k)], 1).mean(1)
        target = negative_guided_target(v_c, v_ref, cfg.eta)
        with self.handle.recording(b, cfg.localize_reduction) as eraser_out:
            v_e_c = self.spec.velocity(batch.x_c, batch.t_c, batch.emb_c).float()
        eraser_c = {i: o for i, o in eraser_out.items()}
        out = {"l_unlearn": unlearn_loss(v_e_c, target)}
        if p:
            v_p0 = self._frozen(batch.x_p, batch.t_p, batch.emb_p)
            v_e_p = self.spec.velocity(batch.x_p, batch.t_p, batch.emb_p).float()
            out["l_preserve"] = preserve_loss(v_e_p, v_p0)
        else:
            out["l_preserve"] = v_e_c.new_zeros(())
        if self.capture is not None:
            layout = self.spec.token_layout(batch.x_c.shape[1:])
            mask, _ = localization_mask(self.capture.probs(), batch.sel, layout.video_grid, cfg.mask_threshold)
            out["l_localize"] = localization_loss([eraser_c[i] for i in sorted(eraser_c)], mask)
            out["mask_fraction"] = mask.mean().detach()
        else:
            out["l_localize"] = v_e_c.new_zeros(())
        out["loss"] = cfg.w_unlearn * out["l_unlearn"] + cfg.w_preserve * out["l_preserve"] + cfg.w_localize * out["l_localize"]
        return out

    def detach(self) -> None:
        self.handle.remove()
        if self.capture is not None:
            self.capture.remove()
