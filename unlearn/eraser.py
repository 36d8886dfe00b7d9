"""Eraser adapters (Receler-style): layout, attach/detach, save/load.

An eraser is a zero-initialised residual MLP `E(h) = up(GELU(down(h)))` on the
video-token output of one attention module per block: `video_out <- video_out + E(video_out)`;
everything else the module returns passes unchanged. Which module and how its
output splits are the model family's answers (`spec.eraser_modules`,
`spec.video_of`, `spec.with_video`; CogVideoX: each block's joint attention
`attn1`, after the out-projection, before the AdaLN gate and residual).

Layout follows PEFT's split: the file's metadata (`EraserMeta`; the YAML section is `unlearn.config.EraserOptions`), the layer
(`Eraser`), and the attachment (`EraserHandle`). Erasers are attached with
forward hooks, so the backbone's module tree and `state_dict` keys never change,
and one network gives both the frozen "original" output (`with handle.disabled():`)
and the "unlearned" output — no second copy of a multi-billion-parameter model.
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
from unlearn.models.families import base_family, family_of_transformer, spec_class
from unlearn.models.spec import first_rows

FORMAT_VERSION = 1
# A trained eraser's weights stay O(1) (zero-init `up`, lr ~1e-4, a few hundred steps: |w| < ~10).
# Beyond this bound the eraser destroys the model's output (NaN/black frames) instead of erasing a
# concept, and evaluation would score that as perfect erasure: refuse to write it.
MAX_ABS_WEIGHT = 1e4
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
    # The backbone it was trained on (`unlearn.base_fingerprint`): checked when it is loaded, so an eraser is not
    # applied to another model of the same shape. Empty in files written before it existed and in imports
    # without --model (they load with a warning).
    base_fingerprint: dict = field(default_factory=dict)


class EraserSet(nn.Module):
    """All erasers of one model, keyed by block index (`erasers.<i>.down.weight`, ...)."""

    def __init__(self, meta: EraserMeta):
        super().__init__()
        self.meta = meta
        self.erasers = nn.ModuleDict({str(i): Eraser(meta.hidden_size, meta.rank) for i in meta.block_indices})
        # An optional content gate (unlearn.gates): its tensors are `gate.*` of the same file, its settings extra.gate
        self.gate = None
        if isinstance(meta.extra, dict) and meta.extra.get("gate"):
            from unlearn.gates import ContentGate

            self.gate = ContentGate(meta.extra["gate"])

    @classmethod
    def for_spec(cls, spec, rank: int, blocks: list[int] | None = None, **meta_kw) -> "EraserSet":
        meta_kw.setdefault("model_family", spec.family)
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
    - `recording(rows, reduction)`: context manager, keeps per block what the localization
      loss needs: the per-token energy of the eraser output of the first `rows` batch rows.
    - `remove()`: detach all hooks; the transformer is exactly as before.
    """

    def __init__(self, transformer: nn.Module, eraser_set: EraserSet, spec_cls):
        self.transformer = transformer
        self.eraser_set = eraser_set
        self.spec_cls = spec_cls
        self.enabled = True
        # Recording is armed by `recording(rows)` and stays armed after the context exits: gradient
        # checkpointing re-runs the hooks during backward and must see the same ops it saw in forward
        # (else "a different number of tensors was saved"). Results are stored only inside the context
        # (`_sink`); outside it a recomputed energy is simply dropped. Only grad-enabled forwards record,
        # so generation (inference mode) never pays for it.
        self._record_rows = 0
        self._reduction = "sum"
        self._sink: dict[int, torch.Tensor] | None = None
        self.outputs: dict[int, torch.Tensor] = {}
        self._hooks = []
        modules = spec_cls.eraser_modules(transformer)
        # A denoiser of experts (Wan 2.2 A14B) has one eraser set per expert; the loss sees one record per
        # logical block (expert e's block i is key i), each row's from the expert that served it.
        per_expert = len(modules) // len(getattr(transformer, "experts", (transformer,)))
        self._key = {i: i % per_expert for i in eraser_set.meta.block_indices}
        self._meter: list | None = None  # [sum ||E(h)||^2, sum ||h||^2] while `meter_start()` is armed
        self._routed: dict[int, tuple[int, torch.Tensor]] = {}  # eraser -> its rows in this step's forward 2
        self._parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # key -> (rows, energy) per expert
        for i in eraser_set.meta.block_indices:
            self._hooks.append(modules[i].register_forward_hook(self._make_hook(i)))
        if getattr(eraser_set, "gate", None) is not None:  # on the whole denoiser: it reads and corrects its output
            self._hooks.append(eraser_set.gate.attach(transformer, self))

    def _make_hook(self, index: int):
        eraser = self.eraser_set.erasers[str(index)]
        spec = self.spec_cls

        def hook(module, args, output):
            if not self.enabled:
                return output
            video = spec.video_of(output)
            delta = eraser(video)
            if self._meter is not None:  # generation: how much the eraser adds, relative to what it acts on
                with torch.no_grad():
                    self._meter[0] = self._meter[0] + torch.linalg.vector_norm(delta.detach()).float().pow(2)
                    self._meter[1] = self._meter[1] + torch.linalg.vector_norm(video.detach()).float().pow(2)
            if self._record_rows and torch.is_grad_enabled():
                # Only the energy ||E||^2 per video token of the concept rows ([rows, Nv] fp32) is kept,
                # not the [B+P, Nv, D] output: autograd saves one fp32 copy of those rows (the copy
                # below, so the full `delta` is not kept alive by a view), nothing else; under gradient
                # checkpointing not even that (it is recomputed in backward).
                n = self._record_rows
                c, pos = first_rows(n)  # a routed sub-batch (an expert's rows) holds c of the n rows
                if pos is not None:
                    self._routed[index] = (c, pos)
                elif index in self._routed:  # checkpoint recompute in backward: the rows its forward saw
                    c, pos = self._routed[index]
                e = delta[:c].to(torch.float32, copy=True)
                energy = e.pow(2).sum(-1) if self._reduction == "sum" else e.pow(2).mean(-1)
                if self._sink is not None:
                    if pos is None:
                        self._sink[self._key[index]] = energy
                    else:  # merged into the caller's row order when recording ends (outside any checkpoint)
                        self._parts.setdefault(self._key[index], []).append((pos, energy))
            return spec.with_video(output, video + delta)

        return hook

    @contextlib.contextmanager
    def disabled(self):
        prev, self.enabled = self.enabled, False
        try:
            yield self
        finally:
            self.enabled = prev

    @contextlib.contextmanager
    def recording(self, rows: int, reduction: str = "sum"):
        """Record the per-token eraser energy of the first `rows` rows (reduction over D: sum | mean).

        The caller clears the yielded dict once its loss is built (the graph keeps what backward needs).
        """
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.outputs = {}
        self._routed, self._parts = {}, {}
        self._record_rows, self._reduction = int(rows), reduction
        self._sink = self.outputs
        try:
            yield self.outputs
        finally:
            self._sink = None  # stays armed (rows, reduction) for checkpoint recomputation in backward
            for key, parts in self._parts.items():  # experts' rows back in the caller's order
                full = parts[0][1].new_zeros((self._record_rows, parts[0][1].shape[1]))
                for pos, energy in parts:
                    full = full.index_put((pos,), energy)
                self.outputs[key] = full
            self._parts = {}

    def meter_start(self) -> None:
        """Sum the erasers' output energy ||E(h)||^2 and their input's ||h||^2 over every forward until
        `meter_stop()` (all blocks, steps and CFG branches of one generated video). Two norms per hooked
        forward, no copies: what the eval's `eraser_energy` check reads."""
        self._meter = [0.0, 0.0]

    def meter_stop(self) -> float | None:
        """sum ||E(h)||^2 / sum ||h||^2 since `meter_start()` (None if no enabled forward ran); disarms."""
        m, self._meter = self._meter, None
        if m is None or not torch.is_tensor(m[1]):
            return None
        e, h = float(m[0]), float(m[1])
        return e / h if h > 0 else (0.0 if e == 0 else float("inf"))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.outputs, self._sink, self._record_rows, self._meter = {}, None, 0, None


class EraserMismatchError(ValueError):
    """An eraser loaded into a model of another family or size (the message names both)."""


class EraserBaseMismatchError(EraserMismatchError):
    """An eraser loaded into a model of its family and shape whose weights are not its base model's."""


class EraserBaseWarning(UserWarning):
    """An eraser whose base model cannot be checked (no fingerprint in the file), or only by config."""


ALLOW_OTHER_BASE_FIX = "pass load_eraser(..., allow_other_base=True) to apply it anyway"


def check_base(meta: EraserMeta, current, *, eraser: str, allow_other_base: bool = False,
               fix: str = ALLOW_OTHER_BASE_FIX) -> list[str]:
    """Refuse (EraserBaseMismatchError, one line naming both models, their fingerprints and `fix`) an eraser
    whose recorded base fingerprint does not match `current` (`unlearn.base_fingerprint.Current`), unless
    `allow_other_base`. Returns the warnings to show: no fingerprint recorded, config-only comparison, or a
    mismatch that was allowed."""
    from unlearn.base_fingerprint import compare

    try:
        v = compare(meta.base_fingerprint, current)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EraserFileError(f"eraser {eraser}: base_fingerprint in {CONFIG_NAME} is malformed ({type(exc).__name__}: "
                              f"{exc}); retrain or re-import the eraser") from None
    base = meta.base_model or "?"
    if v.status == "match":
        return []
    if v.status == "unknown":
        return [f"eraser {eraser}: {v.detail}, so it cannot be checked against {current.where}; make sure it was "
                f"trained on this model (base_model {base!r}); retraining, or importing with --model, records one"]
    if v.status == "config-only":
        return [f"eraser {eraser}: base model compared by config only ({v.detail})"]
    what = (f"eraser {eraser} was trained on base model {base} (fingerprint {v.stored_digest}), but {current.where} "
            f"is another model of the same shape (fingerprint {v.current_digest or '?'}: {v.detail})")
    if allow_other_base:
        return [f"{what}; applied anyway, as allowed: its numbers describe the eraser on a model it was not "
                "trained for"]
    raise EraserBaseMismatchError(f"{what}: its numbers there would be wrong. Use the model it was trained on, or "
                                  f"{fix}")


def check_fits(meta: EraserMeta, family: str, num_blocks: int, hidden: int) -> None:
    """Refuse an eraser made for another model family or size (EraserMismatchError naming both).

    One rule for `attach` (a loaded transformer) and for planning (the model directory's configs).
    """
    if base_family(family) != base_family(meta.model_family):  # a site variant (wan-attn1) runs on its base's models
        raise EraserMismatchError(
            f"Eraser family mismatch: the eraser was trained on a {meta.model_family!r} model "
            f"({meta.base_model or '?'}), but this transformer is a {family!r} model. "
            "Load it into the model family it was trained on."
        )
    if (meta.num_blocks, meta.hidden_size) != (num_blocks, hidden):
        raise EraserMismatchError(
            f"Eraser shape mismatch: the eraser was trained for {meta.num_blocks} blocks x hidden {meta.hidden_size} "
            f"(base model {meta.base_model or '?'}), but this transformer has {num_blocks} blocks x hidden {hidden}. "
            "Load it into the model family/size it was trained on."
        )


def attach(transformer: nn.Module, eraser_set: EraserSet) -> EraserHandle:
    """Hook `eraser_set` into `transformer` after checking the family and the shapes match."""
    m = eraser_set.meta
    spec_cls = spec_class(m.model_family)
    if not spec_cls.matches(transformer):
        try:
            found = family_of_transformer(transformer)
        except TypeError:
            found = type(transformer).__name__
        check_fits(m, found, 0, 0)  # raises, naming both families
    check_fits(m, m.model_family, len(spec_cls.eraser_modules(transformer)), spec_cls.hidden_size_of(transformer))
    p = next(transformer.parameters())
    eraser_set.to(device=p.device)
    return EraserHandle(transformer, eraser_set, spec_cls)


# --- files -------------------------------------------------------------------------------------

class EraserFileError(ValueError):
    """An eraser directory whose files cannot be read as an eraser (the message names the file)."""


class BrokenEraserError(ValueError):
    """The eraser's weights are non-finite or absurdly large: erasure by destruction, not by training."""


def check_weights(state: dict[str, torch.Tensor], where: str = "eraser") -> None:
    for k, v in state.items():
        if not torch.isfinite(v).all():
            raise BrokenEraserError(
                f"{where}: {k} has non-finite values; training diverged. Lower train.lr or loss.eta, "
                "or keep train.grad_clip on; refusing to write an eraser that destroys the model's output."
            )
        peak = float(v.abs().max()) if v.numel() else 0.0
        if peak > MAX_ABS_WEIGHT:
            raise BrokenEraserError(
                f"{where}: {k} has |w| = {peak:.3g} > {MAX_ABS_WEIGHT:g}; such an eraser turns videos into noise "
                "or black frames, which would score as perfect erasure. Lower train.lr (or loss.eta) and retrain."
            )


def save_eraser(eraser_set: EraserSet, directory: str | Path) -> Path:
    """Write `eraser.safetensors` + `eraser_config.json` atomically (never pickle).

    Refuses (BrokenEraserError) weights that are non-finite or above MAX_ABS_WEIGHT.
    """
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in eraser_set.state_dict().items()}
    check_weights(state, str(directory))

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "t2vu_format_version": str(FORMAT_VERSION)})
        (tmp / CONFIG_NAME).write_text(json.dumps(asdict(eraser_set.meta), indent=2, sort_keys=True))

    return atomic_replace_dir(directory, fill)


def read_eraser(directory: str | Path) -> EraserSet:
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise FileNotFoundError(f"{directory} is not an eraser directory: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        raw = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EraserFileError(f"{cfg_path} is not valid JSON ({exc}); the eraser directory is damaged") from None
    if not isinstance(raw, dict):
        raise EraserFileError(f"{cfg_path} must hold a JSON object (the eraser's metadata)")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise EraserFileError(f"{cfg_path}: format_version {version} is not supported (this build reads {FORMAT_VERSION})")
    try:
        eraser_set = EraserSet(EraserMeta(**raw))
    except TypeError as exc:
        raise EraserFileError(f"{cfg_path}: unexpected or missing fields ({exc})") from None
    if not isinstance(eraser_set.meta.base_fingerprint, dict):
        raise EraserFileError(f"{cfg_path}: base_fingerprint must be a JSON object (the base model's fingerprint)")
    try:
        state = load_file(str(w_path))
    except Exception as exc:  # safetensors raises its own SafetensorError (not an OSError) on a damaged file
        raise EraserFileError(f"{w_path} is not a readable safetensors file ({exc}); the eraser directory is damaged") from None
    expected = eraser_set.state_dict()
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        raise EraserFileError(f"{w_path}: tensors do not match {CONFIG_NAME} (missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise EraserFileError(f"{w_path}: {k} has shape {tuple(v.shape)}, {CONFIG_NAME} implies {tuple(expected[k].shape)}")
    eraser_set.load_state_dict(state)
    return eraser_set


def load_eraser(pipe_or_transformer, directory: str | Path, *, allow_other_base: bool = False) -> EraserHandle:
    """Attach a trained eraser to a loaded pipeline of its family (or to its transformer).

        pipe = CogVideoXPipeline.from_pretrained(path)
        handle = load_eraser(pipe, "runs/x/eraser")   # handle.disabled() / handle.remove()

    A Wan 2.2 A14B pipeline gets both experts' eraser sets (its `transformer` and `transformer_2`).
    The eraser's recorded base-model fingerprint must match the transformer's (`check_base`):
    another model of the same shape is refused (EraserBaseMismatchError) unless `allow_other_base`;
    a file without a fingerprint loads with an `EraserBaseWarning`.
    """
    import warnings

    from unlearn.base_fingerprint import current_of_module

    eraser_set = read_eraser(directory)
    transformer = pipe_or_transformer
    if hasattr(pipe_or_transformer, "transformer"):  # a pipeline: its family says what the denoiser is
        transformer = spec_class(eraser_set.meta.model_family).denoiser_of(pipe_or_transformer)
    p = next(transformer.parameters())
    eraser_set.to(dtype=p.dtype)
    handle = attach(transformer, eraser_set)  # family and shape first: their messages say more
    try:
        notes = check_base(eraser_set.meta, current_of_module(transformer), eraser=str(directory),
                           allow_other_base=allow_other_base)
    except BaseException:
        handle.remove()
        raise
    for note in notes:
        warnings.warn(note, EraserBaseWarning, stacklevel=2)
    return handle
