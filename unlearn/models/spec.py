"""The model-spec seam: what losses and the training step need from a video diffusion model.

Losses and the step only talk to this protocol, so a second family
(HunyuanVideo, Wan) is one new file next to `cogvideox.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """Where text and video tokens sit in a block's joint attention."""

    text_len: int  # text tokens come first in the joint sequence
    video_grid: tuple[int, int, int]  # (frames, height, width) of video tokens, row-major

    @property
    def video_len(self) -> int:
        f, h, w = self.video_grid
        return f * h * w


class ModelSpec(Protocol):
    family: str
    transformer: nn.Module
    text_len: int

    def blocks(self) -> list[nn.Module]: ...

    def attention(self, block: nn.Module) -> nn.Module: ...

    def hidden_size(self) -> int: ...

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]: ...

    def token_layout(self, latent_shape: tuple[int, ...]) -> TokenLayout: ...

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor: ...

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...
