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


def localization_loss(eraser_energy: list[torch.Tensor], mask: torch.Tensor, n_bg: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Penalise eraser output outside the concept mask (DESIGN §1: ||E * (1 - M)||^2).

    eraser_energy: per layer [B, Nv], the eraser output's energy per video token of the
    concept rows, already reduced over the hidden dimension D by the recording hook
    (`loss.localize_reduction`: "sum" = ||E_token||^2 as in DESIGN §1, "mean" = /D);
    mask: [B, Nv] with 1 on concept tokens. Per layer: the energy summed over background
    tokens, divided by the number of background tokens; then the mean over layers.
    n_bg: the whole mask's background count where energies and mask cover one sequence-parallel shard's tokens
    (`unlearn.sequence_parallel`): the result is that shard's share, to be summed over the shards.
    """
    bg = 1.0 - mask
    n_bg = (bg.sum() if n_bg is None else n_bg).clamp_min(1.0)
    per_layer = [(e.float() * bg).sum() / n_bg for e in eraser_energy]
    return torch.stack(per_layer).mean()
