"""Eraser adapters (Receler-style): layout, attach/detach, save/load.

An eraser is a zero-initialised residual MLP `E(h) = up(GELU(down(h)))` on the
video-token output of each block's joint attention (after the out-projection,
before the AdaLN gate and residual): `video_out <- video_out + E(video_out)`.
Text tokens pass unchanged.

Layout follows PEFT's split: `EraserConfig`-like metadata (`EraserMeta`), the
layer (`Eraser`), and the attachment (`EraserHandle`). Erasers are attached with
forward hooks on `attn1`, so the backbone's module tree and `state_dict` keys
never change, and one network gives both the frozen "original" output
(`with handle.disabled():`) and the "unlearned" output — no second copy of a
multi-billion-parameter model.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from unlearn.fsutil import atomic_replace_dir

FORMAT_VERSION = 1
WEIGHTS_NAME = "eraser.safetensors"
CONFIG_NAME = "eraser_config.json"


class Eraser(nn.Module):
    def __init__(self, hidden_size: int, rank: int):
        super().__init__()
        self.down = nn.Linear(hidden_size, rank)
        self.up = nn.Linear(rank, hidden_size)
        # Zero `up` => E(h) == 0 exactly at step 0: attaching changes nothing until trained.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dtype = h.dtype
        w = self.down.weight.dtype
        return self.up(F.gelu(self.down(h.to(w)))).to(dtype)


@dataclass
class EraserMeta:
    hidden_size: int
    rank: int
    num_blocks: int  # blocks in the base transformer
    block_indices: list[int]  # blocks that carry an eraser
    target_concept: str = ""
    base_model: str = ""
    model_family: str = "cogvideox"
    config_digest: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)


class EraserSet(nn.Module):
    """All erasers of one model, keyed by block index (`erasers.<i>.down.weight`, ...)."""

    def __init__(self, meta: EraserMeta):
        super().__init__()
        self.meta = meta
        self.erasers = nn.ModuleDict({str(i): Eraser(meta.hidden_size, meta.rank) for i in meta.block_indices})

    @classmethod
    def for_spec(cls, spec, rank: int, blocks: list[int] | None = None, **meta_kw) -> "EraserSet":
        n = len(spec.blocks())
        idx = list(range(n)) if blocks is None else sorted(set(blocks))
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise ValueError(f"eraser.blocks {bad} out of range: the model has {n} blocks (0..{n - 1})")
        return cls(EraserMeta(hidden_size=spec.hidden_size(), rank=rank, num_blocks=n, block_indices=idx, **meta_kw))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class EraserHandle:
    """Live attachment of an `EraserSet` to a transformer.

    - `disabled()`: context manager, erasers output nothing (the frozen base model).
    - `recording()`: context manager, keeps each block's eraser output for the localization loss.
    - `remove()`: detach all hooks; the transformer is exactly as before.
    """

    def __init__(self, transformer: nn.Module, eraser_set: EraserSet, attn_modules: list[nn.Module]):
        self.transformer = transformer
        self.eraser_set = eraser_set
        self.enabled = True
        self._record = False
        self.outputs: dict[int, torch.Tensor] = {}
        self._hooks = []
        for i in eraser_set.meta.block_indices:
            self._hooks.append(attn_modules[i].register_forward_hook(self._make_hook(i)))

    def _make_hook(self, index: int):
        eraser = self.eraser_set.erasers[str(index)]

        def hook(module, args, output):
            if not self.enabled:
                return output
            video, text = output
            delta = eraser(video)
            if self._record:
                # Keyed by block: gradient-checkpoint recomputation overwrites with equal values.
                self.outputs[index] = delta
            return video + delta, text

        return hook

    @contextlib.contextmanager
    def disabled(self):
        prev, self.enabled = self.enabled, False
        try:
            yield self
        finally:
            self.enabled = prev

    @contextlib.contextmanager
    def recording(self):
        self.outputs = {}
        prev, self._record = self._record, True
        try:
            yield self.outputs
        finally:
            self._record = prev

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.outputs = {}


def _attn_modules(transformer: nn.Module) -> list[nn.Module]:
    if not hasattr(transformer, "transformer_blocks"):
        raise TypeError(f"{type(transformer).__name__} has no transformer_blocks; expected a CogVideoX transformer")
    return [blk.attn1 for blk in transformer.transformer_blocks]


def _hidden_size(transformer: nn.Module) -> int:
    cfg = transformer.config
    return int(cfg.num_attention_heads * cfg.attention_head_dim)


def attach(transformer: nn.Module, eraser_set: EraserSet) -> EraserHandle:
    """Hook `eraser_set` into `transformer` after checking the shapes match."""
    n, d = len(transformer.transformer_blocks), _hidden_size(transformer)
    m = eraser_set.meta
    if (m.num_blocks, m.hidden_size) != (n, d):
        raise ValueError(
            f"Eraser shape mismatch: the eraser was trained for {m.num_blocks} blocks x hidden {m.hidden_size} "
            f"(base model {m.base_model or '?'}), but this transformer has {n} blocks x hidden {d}. "
            "Load it into the model family/size it was trained on."
        )
    p = next(transformer.parameters())
    eraser_set.to(device=p.device)
    return EraserHandle(transformer, eraser_set, _attn_modules(transformer))


# --- files -------------------------------------------------------------------------------------

def save_eraser(eraser_set: EraserSet, directory: str | Path) -> Path:
    """Write `eraser.safetensors` + `eraser_config.json` atomically (never pickle)."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in eraser_set.state_dict().items()}

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "t2vu_format_version": str(FORMAT_VERSION)})
        (tmp / CONFIG_NAME).write_text(json.dumps(asdict(eraser_set.meta), indent=2, sort_keys=True))

    return atomic_replace_dir(directory, fill)


def read_eraser(directory: str | Path) -> EraserSet:
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise FileNotFoundError(f"{directory} is not an eraser directory: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
    raw = json.loads(cfg_path.read_text())
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: format_version {version} is not supported (this build reads {FORMAT_VERSION})")
    eraser_set = EraserSet(EraserMeta(**raw))
    state = load_file(str(w_path))
    expected = eraser_set.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise ValueError(f"{w_path}: tensors do not match {CONFIG_NAME} (missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"{w_path}: {k} has shape {tuple(v.shape)}, {CONFIG_NAME} implies {tuple(expected[k].shape)}")
    eraser_set.load_state_dict(state)
    return eraser_set


def load_eraser(pipe_or_transformer, directory: str | Path) -> EraserHandle:
    """Attach a trained eraser to a loaded `CogVideoXPipeline` (or its transformer).

        pipe = CogVideoXPipeline.from_pretrained(path)
        handle = load_eraser(pipe, "runs/x/eraser")   # handle.disabled() / handle.remove()
    """
    transformer = getattr(pipe_or_transformer, "transformer", pipe_or_transformer)
    eraser_set = read_eraser(directory)
    p = next(transformer.parameters())
    eraser_set.to(dtype=p.dtype)
    return attach(transformer, eraser_set)
