"""The model-spec seam: everything the method needs to know about a video diffusion family.

Losses, the fused step, the trainer, the embedding cache and the eval stage talk
only to this protocol; `unlearn/models/families.py` maps `model.family` to the
class implementing it (one file per family: `cogvideox.py`, `wan.py`).

Two kinds of answers:
- *class-level* (static) answers that need no loaded spec, only a model
  directory or a bare transformer: how to load the parts and the pipeline, how
  prompts are encoded, where an eraser hooks and how its module's output splits
  into video tokens and the rest, which attention modules the localization mask
  is captured from and with which processor. Eraser files and evaluation only
  hold a pipeline, so they use these.
- *instance* answers of a loaded transformer + scheduler (training): blocks,
  hidden size, latent shape, token layout, the model prediction, noising and the
  family's own sampler for trajectory x_t.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """Where text and video tokens sit for the attention that feeds the mask."""

    text_len: int  # text tokens (joint attention: first in the sequence; cross attention: the keys)
    video_grid: tuple[int, int, int]  # (frames, height, width) of video tokens, row-major

    @property
    def video_len(self) -> int:
        f, h, w = self.video_grid
        return f * h * w


class ModelSpec(Protocol):
    # --- identity -----------------------------------------------------------------------------
    family: ClassVar[str]  # the `model.family` key in the registry
    pipeline_class_name: ClassVar[str]  # model_index.json `_class_name` of this family's pipelines
    prediction_type: ClassVar[str]  # "v_prediction" (CogVideoX) | "flow" (Wan: t = sigma*1000, float)

    # --- files (class-level) ------------------------------------------------------------------
    @staticmethod
    def check_model_dir(path: str | Path, need: tuple[str, ...] = ...) -> Path: ...

    @staticmethod
    def eraser_shape_of(path: str | Path) -> tuple[int, int]: ...  # (eraser sites, hidden) from the dir's configs

    @staticmethod
    def load_tokenizer(path: str | Path) -> Any: ...

    @staticmethod
    def load_text_encoder(path: str | Path, dtype: str) -> nn.Module: ...

    @staticmethod
    def text_len_of(path: str | Path) -> int: ...

    @staticmethod
    def encode_prompts(tokenizer, text_encoder, prompts: list[str], max_length: int) -> torch.Tensor: ...

    @staticmethod
    def load_pipeline(path: str | Path, dtype: str, transformer: nn.Module | None = None) -> Any: ...

    eval_schedulers: ClassVar[tuple[str, ...]]  # generation.scheduler values the family accepts

    @staticmethod
    def eval_scheduler(name: str, scheduler_config) -> Any: ...

    @staticmethod
    def pipeline_kwargs(pipe, gen) -> dict: ...

    @staticmethod
    def denoiser_of(pipe) -> nn.Module: ...  # what erasers attach to: pipe.transformer (or both Wan 2.2 experts)

    # --- eraser site and attention capture (class-level, from a bare transformer) -------------
    @staticmethod
    def matches(transformer: nn.Module) -> bool: ...

    @staticmethod
    def eraser_modules(transformer: nn.Module) -> list[nn.Module]: ...

    @staticmethod
    def video_of(output) -> torch.Tensor: ...

    @staticmethod
    def with_video(output, video: torch.Tensor): ...

    @staticmethod
    def hidden_size_of(transformer: nn.Module) -> int: ...

    @staticmethod
    def capture_modules(transformer: nn.Module) -> list[nn.Module]: ...

    @staticmethod
    def capture_processor(chunk: int, full_matrix: bool): ...

    # --- a loaded transformer + scheduler (training) ------------------------------------------
    transformer: nn.Module
    text_len: int

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "float32") -> "ModelSpec": ...

    @classmethod
    def from_pipeline(cls, pipe) -> "ModelSpec": ...

    def blocks(self) -> list[nn.Module]: ...

    def hidden_size(self) -> int: ...

    @property
    def num_train_timesteps(self) -> int: ...

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, ...]: ...

    def token_layout(self, latent_shape: tuple[int, ...]) -> TokenLayout: ...

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor: ...

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor: ...

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...

    def sample_trajectory(self, text_emb: torch.Tensor, uncond_emb: torch.Tensor, latent_shape, num_steps: int,
                          guidance: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]: ...


# --- helpers shared by the spec files -------------------------------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_model_json(path: str | Path) -> dict:
    """A model directory's JSON file (model_index.json, <part>/config.json) as a dict; a truncated,
    non-UTF-8 or non-object file is a one-line ConfigError naming it (a damaged download), not a
    JSONDecodeError traceback."""
    import json

    from unlearn.errors import ConfigError

    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 JSON: the model directory is damaged; download or convert it "
                          "again") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}; "
                          "truncated?): the model directory is damaged or incomplete; download or convert it "
                          "again") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, not {type(data).__name__}: the model directory is "
                          "damaged; download or convert it again")
    return data


def check_backbone(transformer: nn.Module, blocks: list, model: str | Path) -> None:
    """Refuse a loaded transformer that cannot be trained on, naming the model (not a training setting):
    no blocks (`num_layers: 0`: no eraser site, an empty optimizer), or NaN/inf in its frozen weights
    (every loss would be NaN and the message would blame train.lr). One pass over the weights: about
    a second per few GB on a CPU, little next to loading them."""
    from unlearn.errors import ConfigError

    if not blocks:
        n = getattr(getattr(transformer, "config", None), "num_layers", None)
        raise ConfigError(f"model.path {model}: the transformer has no blocks (transformer/config.json num_layers: "
                          f"{n}), so there is nothing to attach an eraser to; the model directory is damaged or "
                          "its config was edited: use the model's own config.json")
    # a backbone loaded into its shards (unlearn.sharded_load): each rank checks the rows it holds
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731
    bad = [name for name, t in [*transformer.named_parameters(), *transformer.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(local(t)).all())]
    if bad:
        raise ConfigError(f"model.path {model}: {len(bad)} weight tensor(s) of the transformer hold NaN or inf "
                          f"(first: {bad[0]}); the model files are damaged (or were saved from a diverged run), "
                          "not a training setting: download or convert the model again")


# Set by unlearn.sharded_load.sharded_loading: `(subfolder, dtype) -> module` that loads a denoiser part
# (transformer/, transformer_2/) into this rank's shards instead of the family's loader. None: the family's.
PART_LOADER: contextvars.ContextVar[Callable[[str, torch.dtype], Any] | None] = contextvars.ContextVar(
    "t2vu_part_loader", default=None)
DENOISER_PARTS = ("transformer", "transformer_2")


def load_parts(path: Path, dtype: str, components, loaders: dict[str, Callable[[str, torch.dtype], Any]],
               family: str) -> dict:
    """Load only the named parts of a model directory (a trainer never loads a multi-GB text encoder
    when the embedding cache is warm), each with its family's loader `(subfolder, dtype) -> part`.
    Modules come back frozen in eval mode; a tokenizer passes the project's tokenizer check."""
    from unlearn.models.tokenizer import check_tokenizer

    out: dict = {}
    for name in components:
        if name not in loaders:
            raise ValueError(f"Unknown {family} component {name!r}; known: {tuple(loaders)}")
        load = PART_LOADER.get() if name in DENOISER_PARTS else None
        out[name] = part = (load or loaders[name])(str(Path(path) / name), DTYPES[dtype])
        if name == "tokenizer":
            check_tokenizer(part)
        if isinstance(part, nn.Module):
            part.requires_grad_(False).eval()
    return out


# --- sub-batch forwards (a denoiser that routes rows, e.g. Wan 2.2 A14B's two experts) -------------
# A module inside a routed forward sees a sub-batch: rows `routed()` of its caller's batch, in the
# caller's order. Hooks that keep per-row results of the caller's first n rows (the eraser
# recording, attention capture) use `first_rows` to find theirs and put them back in place.
_ROUTED: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("t2vu_routed_rows", default=None)


@contextlib.contextmanager
def routed_rows(rows: torch.Tensor):
    """Mark a forward on the caller's rows `rows` (ascending, 1-D indices)."""
    token = _ROUTED.set(rows)
    try:
        yield
    finally:
        _ROUTED.reset(token)


def first_rows(n: int) -> tuple[int, torch.Tensor | None]:
    """(count, positions) of the caller's first n rows in the current forward's batch.

    Unrouted: (n, None) -- they are the first n rows. Routed: the rows below n among those
    routed here, which come first (routing keeps the caller's order), and their positions in
    the caller's batch.
    """
    rows = _ROUTED.get()
    if rows is None:
        return n, None
    pos = rows[rows < n]
    return int(pos.numel()), pos
