"""Import erasers trained by other tools into this project's format (`unlearn.eraser`).

Format `t2vunlearning`: the erasers the T2VUnlearning code distributes for CogVideoX, as written by
its `save_cogvideo_eraser_from_transformer` (read in the public fork JiaxinWu-25/videoerasing,
`receler/erasers/cogvideo_erasers.py` and `receler/erasers/utils.py`):

    eraser_weights.pt    torch.save({"transformer_blocks.<i>.attn1.adapter": AdapterEraser.state_dict(), ...})
    eraser_config.json   {"eraser_type": "adapter", "eraser_rank": r}

Their `AdapterEraser(dim, r)` is `down = Linear(dim, r)`, `act = nn.GELU()` (exact erf GELU), `up = Linear(r, dim)`;
`CogVideoXWithEraser` replaces each block's `attn1` and returns `(video + up(gelu(down(video))), text)` — the
same residual MLP at the same site as this project's CogVideoX eraser (`unlearn.eraser.Eraser` on the video
output of each block's `attn1`, after the out-projection, before the AdaLN gate; no scale, same activation),
with the same parameter names. So the conversion is exact: the tensors are copied (upcast to float32, which is
lossless), nothing is approximated. Anything else in the file (other adapter types, other keys, other shapes,
HunyuanVideo's block names) is refused with a line naming the file and what is wrong.

Base-model fingerprint (`unlearn.base_fingerprint`, checked whenever an eraser is loaded): the imported file
records none of its own, so `import_eraser(..., model_dir=DIR)` (`t2vu import-eraser --model DIR`) records the
fingerprint of DIR, marked `source: "import --model DIR"`: the user's statement that this is the model the
eraser was trained for (T2VUnlearning's CogVideoX erasers: CogVideoX-2b or -5b), which nothing here can verify;
from then on the eraser is refused on any other model of that shape. Without --model the eraser records no
fingerprint and loads everywhere its shape fits, with a warning line saying its base cannot be checked.

Loading uses `torch.load(..., weights_only=True)`: only tensors and plain containers unpickle; a file holding
any other object is refused before anything of it runs. After loading, only a dict of tensors (flat
`<block>.down.weight` keys) or a dict of such dicts keyed by block is accepted.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from unlearn.eraser import EraserFileError, EraserMeta, EraserSet, check_weights, save_eraser

FORMATS = ("t2vunlearning",)
# The T2VUnlearning code names each CogVideoX eraser by its module path in the transformer; a wrapper
# prefix (a pipeline's `transformer.`, DDP's `module.`, torch.compile's `_orig_mod.`) is accepted.
_BLOCK_KEY = re.compile(r"^(?:(?:transformer|module|_orig_mod)\.)*transformer_blocks\.(\d+)\.attn1\.adapter$")
_ADAPTER_KEYS = ("down.weight", "down.bias", "up.weight", "up.bias")
_FAMILY = "cogvideox"  # the only family whose T2VUnlearning layout matches a family of this project


def read_tensor_file(path: str | Path) -> dict:
    """`torch.load(path, weights_only=True)` on the CPU; anything but a dict is refused (one line, names the file)."""
    path = Path(path)
    if not path.is_file():
        raise EraserFileError(f"{path}: no such file (pass the eraser_weights.pt to import)")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (a non-tensor object), RuntimeError (not a torch file), EOFError
        text = str(exc)
        if "WeightsUnpickler error:" in text:  # torch's own reason (e.g. "Unsupported global: GLOBAL builtins.print")
            text = next((ln for ln in text.split("WeightsUnpickler error:", 1)[1].splitlines() if ln.strip()), "")
        first = f"{type(exc).__name__}: {' '.join(text.split('. Please')[0].split())[:160]}"
        raise EraserFileError(
            f"{path}: not a plain tensor file that loads with torch.load(weights_only=True) ({first}); refusing to "
            "unpickle anything else - export the eraser's state dicts only"
        ) from None
    if not isinstance(obj, dict):
        raise EraserFileError(f"{path}: holds a {type(obj).__name__}, expected a dict of adapter state dicts keyed by block")
    return obj


def _blocks(raw: dict, path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{block key: {down.weight, ...}} from a nested dict of state dicts, or a flat dict of tensors."""
    blocks: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise EraserFileError(f"{path}: key {key!r} is not a string; expected block names")
        if isinstance(value, dict):
            for name, tensor in value.items():
                if not isinstance(tensor, torch.Tensor):
                    raise EraserFileError(f"{path}: {key}.{name} is a {type(tensor).__name__}, not a tensor; "
                                          "only dicts of tensors keyed by block are accepted")
                blocks.setdefault(key, {})[str(name)] = tensor
        elif isinstance(value, torch.Tensor):
            for param in _ADAPTER_KEYS:
                if key.endswith("." + param):
                    blocks.setdefault(key[: -len(param) - 1], {})[param] = value
                    break
            else:
                raise EraserFileError(f"{path}: tensor {key!r} is not an adapter parameter ({', '.join(_ADAPTER_KEYS)})")
        else:
            raise EraserFileError(f"{path}: {key} is a {type(value).__name__}, not a tensor or a dict of tensors")
    if not blocks:
        raise EraserFileError(f"{path}: holds no adapter weights")
    return blocks


def _read_config(config_path: Path | None) -> dict:
    if config_path is None or not config_path.is_file():
        return {}
    try:
        cfg = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EraserFileError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise EraserFileError(f"{config_path}: expected a JSON object like {{\"eraser_type\": \"adapter\", \"eraser_rank\": 128}}")
    kind = cfg.get("eraser_type", "adapter")
    if kind != "adapter":
        raise EraserFileError(f"{config_path}: eraser_type {kind!r} is not supported; only T2VUnlearning's "
                              "'adapter' eraser (down -> GELU -> up, residual) converts exactly")
    return cfg


def convert_t2vunlearning(path: str | Path, *, config_path: str | Path | None = None, num_blocks: int | None = None,
                          hidden_size: int | None = None, target_concept: str = "", base_model: str = "",
                          base_fingerprint: dict | None = None) -> EraserSet:
    """A T2VUnlearning CogVideoX `eraser_weights.pt` as an `EraserSet` (exact copy of the weights).

    config_path: their eraser_config.json (default: next to the file; checked when present).
    num_blocks / hidden_size: the target model's (eraser sites, hidden size), e.g. from
    `spec.eraser_shape_of(model_dir)`; without them the file must cover blocks 0..n-1 (their code
    puts an eraser on every block) and n is taken as the model's block count.
    """
    path = Path(path)
    cfg = _read_config(Path(config_path) if config_path else path.with_name("eraser_config.json"))
    blocks = _blocks(read_tensor_file(path), path)
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for key, params in blocks.items():
        m = _BLOCK_KEY.match(key)
        if m is None:
            raise EraserFileError(
                f"{path}: block {key!r} is not a CogVideoX eraser site (expected transformer_blocks.<i>.attn1.adapter); "
                "only T2VUnlearning's CogVideoX erasers can be imported (this project has no model family for others)"
            )
        i = int(m.group(1))
        if i in by_index:
            raise EraserFileError(f"{path}: block {i} appears twice ({key!r})")
        extra, missing = sorted(set(params) - set(_ADAPTER_KEYS)), sorted(set(_ADAPTER_KEYS) - set(params))
        if extra or missing:
            raise EraserFileError(f"{path}: {key} has parameters {sorted(params)}; an adapter eraser has exactly "
                                  f"{list(_ADAPTER_KEYS)} (missing {missing}, unexpected {extra})")
        by_index[i] = params
    first = by_index[min(by_index)]
    if first["down.weight"].ndim != 2:
        raise EraserFileError(f"{path}: down.weight must be a matrix [rank, hidden], got shape {tuple(first['down.weight'].shape)}")
    rank, hidden = (int(s) for s in first["down.weight"].shape)
    want = {"down.weight": (rank, hidden), "down.bias": (rank,), "up.weight": (hidden, rank), "up.bias": (hidden,)}
    for i, params in sorted(by_index.items()):
        for name, shape in want.items():
            if tuple(params[name].shape) != shape:
                raise EraserFileError(f"{path}: block {i} {name} has shape {tuple(params[name].shape)}, expected {shape} "
                                      f"(rank {rank}, hidden {hidden} from block {min(by_index)})")
            if not params[name].is_floating_point():
                raise EraserFileError(f"{path}: block {i} {name} has dtype {params[name].dtype}, expected floating point")
    if "eraser_rank" in cfg and int(cfg["eraser_rank"]) != rank:
        raise EraserFileError(f"{path}: eraser_config.json says eraser_rank {cfg['eraser_rank']}, the weights have rank {rank}")
    if hidden_size is not None and hidden_size != hidden:
        raise EraserFileError(f"{path}: the adapters have hidden size {hidden}, the model has {hidden_size}; "
                              "import it for the model it was trained on")
    indices = sorted(by_index)
    if num_blocks is None:
        if indices != list(range(len(indices))):
            raise EraserFileError(f"{path}: erasers on blocks {indices[:8]}... are not blocks 0..{len(indices) - 1}; "
                                  "pass the model (--model DIR) so the block count is known")
        num_blocks = len(indices)
    elif indices[-1] >= num_blocks:
        raise EraserFileError(f"{path}: an eraser on block {indices[-1]}, but the model has {num_blocks} blocks")
    meta = EraserMeta(hidden_size=hidden, rank=rank, num_blocks=num_blocks, block_indices=indices,
                      target_concept=target_concept, base_model=base_model, model_family=_FAMILY,
                      extra={"imported_from": {"format": "t2vunlearning", "file": str(path.resolve()),
                                               "eraser_config": cfg}},
                      base_fingerprint=dict(base_fingerprint or {}))
    eraser_set = EraserSet(meta)
    state = {f"erasers.{i}.{name}": t.detach().to(torch.float32) for i, params in by_index.items()
             for name, t in params.items()}
    check_weights(state, str(path))
    eraser_set.load_state_dict(state)
    return eraser_set


def import_eraser(fmt: str, path: str | Path, out: str | Path, *, model_dir: str | Path | None = None,
                  target_concept: str = "", base_model: str = "") -> tuple[Path, EraserSet]:
    """Convert `path` (format `fmt`) and write it with `unlearn.eraser.save_eraser` (atomic) to `out`."""
    if fmt not in FORMATS:
        raise EraserFileError(f"--format {fmt!r} is not supported; known: {', '.join(FORMATS)}")
    num_blocks = hidden = None
    fingerprint = None
    if model_dir is not None:
        from unlearn.models.families import family_of_model_dir, spec_class

        family = family_of_model_dir(model_dir)
        if family != _FAMILY:
            raise EraserFileError(f"--model {model_dir} is a {family!r} model; T2VUnlearning erasers of this format are "
                                  f"for {_FAMILY!r}")
        num_blocks, hidden = spec_class(family).eraser_shape_of(model_dir)
        base_model = base_model or str(model_dir)
        from unlearn.base_fingerprint import of_model_dir

        fingerprint = of_model_dir(model_dir, source=f"import --model {model_dir}")
    eraser_set = convert_t2vunlearning(path, num_blocks=num_blocks, hidden_size=hidden,
                                       target_concept=target_concept, base_model=base_model,
                                       base_fingerprint=fingerprint)
    return save_eraser(eraser_set, out), eraser_set
