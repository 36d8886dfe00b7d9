"""The three losses of the method (DESIGN §1). Pure functions of tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_guided_target(v_concept: torch.Tensor, v_ref: torch.Tensor, eta: float) -> torch.Tensor:
    """v_neg = v_ref - eta * (v_concept - v_ref); with v_ref = v("") this is the reference method."""
    return v_ref - eta * (v_concept - v_ref)


def unlearn_loss(v_erased_concept: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(v_erased_concept.float(), target.float())


def preserve_loss(v_erased: torch.Tensor, v_original: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(v_erased.float(), v_original.float())


def localization_loss(eraser_outputs: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Penalise eraser output outside the concept mask.

    eraser_outputs: per layer [B, Nv, D] (concept rows); mask: [B, Nv] with 1 on concept tokens.
    Per layer: sum over background tokens of mean_D(E^2), divided by the number of
    background tokens (mean over D keeps the scale independent of the hidden size);
    then the mean over layers.
    """
    bg = 1.0 - mask
    n_bg = bg.sum().clamp_min(1.0)
    per_layer = [(e.float().pow(2).mean(-1) * bg).sum() / n_bg for e in eraser_outputs]
    return torch.stack(per_layer).mean()
