"""Wan 2.2 A14B: two experts split by noise level, behind the Wan spec as one denoiser.

Wan2.2-T2V-A14B ships two 14B transformers: `transformer` denoises the high-noise steps
(t >= boundary_ratio * num_train_timesteps) and `transformer_2` the low-noise ones;
`WanPipeline` switches between them per sampler step (`boundary_ratio` in model_index.json).
`WanExperts` presents the pair to the method as one transformer:

- forward: each batch row goes to the expert that serves its timestep, exactly the switch the
  pipeline makes (a training batch mixes noise levels; generation sends whole batches);
- eraser sites: the high expert's blocks, then the low expert's (`blocks`), so one eraser file
  holds one eraser set per expert, and each expert's erasers are trained only by the rows (the
  timesteps) that expert serves: their gradients come from nothing else;
- a sub-batch forward runs inside `unlearn.models.spec.routed_rows(rows)`, so the eraser
  recording hook and the attention-capture processor know which of the caller's rows they see
  and put per-row results back in the caller's order (see there).

Memory: both experts are resident (2 x 14B in bf16 = 54 GB of weights before activations);
`t2vu plan` counts both.
"""

from __future__ import annotations

import torch
from torch import nn

from unlearn.models.spec import routed_rows

IDLE_ROW = 2**62  # the row index of an idle expert's zero-weight forward: no caller has that many rows


class WanExperts(nn.Module):
    """`high` (the pipeline's `transformer`) and `low` (`transformer_2`) routed by timestep."""

    def __init__(self, high: nn.Module, low: nn.Module, boundary_timestep: float):
        super().__init__()
        if (high.config.num_attention_heads * high.config.attention_head_dim
                != low.config.num_attention_heads * low.config.attention_head_dim):
            raise ValueError("the two Wan experts must have the same hidden size")
        if high.config.num_layers != low.config.num_layers:
            raise ValueError("the two Wan experts must have the same number of blocks")
        self.high, self.low = high, low
        self.boundary = float(boundary_timestep)
        # Set by unlearn.sharding.shard_backbone: with the experts' weights sharded over the ranks, every
        # forward (no_grad ones too) runs both experts, so every rank issues the same all-gathers.
        self.collective = False

    @property
    def config(self):  # geometry questions (patch size, channels, hidden size) have one answer for both
        return self.high.config

    @property
    def blocks(self) -> list[nn.Module]:
        """Eraser sites: the high-noise expert's blocks, then the low-noise expert's."""
        return [*self.high.blocks, *self.low.blocks]

    @property
    def experts(self) -> tuple[nn.Module, nn.Module]:
        return self.high, self.low

    @property
    def dtype(self) -> torch.dtype:
        return self.high.dtype

    def enable_gradient_checkpointing(self) -> None:
        self.high.enable_gradient_checkpointing()
        self.low.enable_gradient_checkpointing()

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                return_dict: bool = False, **kwargs):
        """The expert of each row (t >= boundary: high); the output in the input's row order."""
        t = timestep if timestep.dim() == 1 else timestep[:, 0]
        high = t.float() >= self.boundary
        parts, order, idle_zero = [], [], None
        for expert, use in ((self.high, high), (self.low, ~high)):
            rows = use.nonzero().squeeze(1)
            if rows.numel():
                with routed_rows(rows):
                    out = expert(hidden_states=hidden_states[rows], timestep=timestep[rows],
                                 encoder_hidden_states=encoder_hidden_states[rows], return_dict=False, **kwargs)[0]
                parts.append(out)
                order.append(rows)
            elif torch.is_grad_enabled() or self.collective:
                # Every eraser must take part in every training step: DeepSpeed ZeRO (like DDP) reduces the
                # gradients of the parameters that got one, and ranks whose batches used different experts
                # would issue different collectives and hang. The idle expert runs, in its own place (high,
                # then low, on every rank: with sharded weights the all-gathers must come in one order), on
                # one row whose result counts 0 (zero gradients for its erasers); its row index matches no
                # caller row, so it records nothing. Cost: one extra row's forward + backward in such steps.
                with routed_rows(torch.tensor([IDLE_ROW], device=t.device)):
                    out = expert(hidden_states=hidden_states[:1], timestep=timestep[:1],
                                 encoder_hidden_states=encoder_hidden_states[:1], return_dict=False, **kwargs)[0]
                idle_zero = 0.0 * out.sum()
        sample = parts[0] if len(parts) == 1 else torch.cat(parts)[torch.argsort(torch.cat(order))]
        if idle_zero is not None:
            sample = sample + idle_zero
        return (sample,)


def is_experts(transformer) -> bool:
    return isinstance(transformer, WanExperts)


def experts_of_pipeline(pipe):
    """The pipeline's denoiser for the method: its transformer, or both experts of a Wan 2.2 A14B."""
    second = getattr(pipe, "transformer_2", None)
    ratio = pipe.config.get("boundary_ratio") if hasattr(pipe, "config") else None
    if second is None:
        return pipe.transformer
    if ratio is None:
        raise ValueError("a Wan pipeline with transformer_2 but no boundary_ratio: set boundary_ratio in "
                         "model_index.json (Wan2.2-T2V-A14B: 0.875)")
    return WanExperts(pipe.transformer, second, float(ratio) * pipe.scheduler.config.num_train_timesteps)
