"""Load the frozen backbone straight into its shards (issue 23): no rank ever holds the whole backbone.

Without this, every rank loads the whole transformer (`from_pretrained`, ~28 GB per Wan 2.2 A14B expert in
bf16, on the host) and then `unlearn.sharding.shard_backbone` keeps 1/N of it: the peak is the whole model
on every rank at once (4 ranks on one 8-GPU host: 4 x 56 GB of host memory for A14B), the very thing
sharding is for. Inside `sharded_loading(device)`, a model spec's `from_pretrained` builds each denoiser part
(transformer/, transformer_2/) this way instead (`unlearn.models.spec.PART_LOADER`):

1. the part's class (its config.json `_class_name`) is built empty: parameters on the meta device, buffers
   real (rope tables are computed in `__init__`, not stored in the files);
2. parameters get the dtypes `from_pretrained` gives them (`dtype`, except the class's
   `_keep_in_fp32_modules`, as diffusers' loader does), still on meta;
3. each unit is sharded (`unlearn.sharding.shard_units`, the same units and FSDP settings as
   `shard_backbone`), then materialised empty on `device` (1/N of each unit; the root-level weights whole);
4. this rank's rows of every weight are read from the safetensors files with plain reads at their byte
   offsets (each rank's rows of a row-major tensor are one contiguous range): not `safe_open`'s mmap,
   whose touched pages would count in the process's resident memory as a second copy of the shard.

Peak per rank: its shards (+ FSDP's padding), the root-level weights and one weight's rows in transit.
`shard_backbone` then finds the units already sharded and only records them. The result equals
`from_pretrained` + `shard_backbone` bit for bit (tests/test_sharded_load.py).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from torch import nn

_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "U8": torch.uint8, "I8": torch.int8,
              "BOOL": torch.bool}


class _Files:
    """The safetensors files of one part: each file's header read once, tensors read by byte range."""

    def __init__(self, sub: Path):
        from unlearn.base_fingerprint import _weight_files
        from unlearn.errors import ConfigError

        where = _weight_files(sub)
        if where is None:
            raise ConfigError(f"{sub}: no safetensors weights (a .bin checkpoint): distributed.shard_backbone "
                              "loads each rank's shard from safetensors files; convert the model "
                              "(save_pretrained(safe_serialization=True)) or set distributed.shard_backbone: false")
        self.where = where
        self.headers: dict[Path, tuple[int, dict]] = {}

    def entry(self, name: str) -> tuple[Path, int, dict]:
        path = self.where[name]
        if path not in self.headers:
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                self.headers[path] = (8 + n, json.loads(f.read(n)))
        base, header = self.headers[path]
        return path, base, header[name]

    def read(self, name: str, start: int | None = None, stop: int | None = None) -> torch.Tensor:
        """Rows [start, stop) of tensor `name` (all of it by default), in the file's dtype."""
        path, base, e = self.entry(name)
        dt, shape = _ST_DTYPES[e["dtype"]], list(e["shape"])
        row = math.prod(shape[1:]) * dt.itemsize if shape else dt.itemsize
        if shape:
            start, stop = (0 if start is None else start), (shape[0] if stop is None else stop)
            shape = [stop - start, *shape[1:]]
        else:
            start, stop = 0, 1
        out = torch.empty(shape, dtype=dt)
        want = (stop - start) * row
        if want:
            buf = out.reshape(-1).view(torch.uint8).numpy()
            with open(path, "rb") as f:
                f.seek(base + e["data_offsets"][0] + start * row)
                got = f.readinto(buf)
            if got != want:
                raise OSError(f"{path}: tensor {name} is cut short ({got} of {want} bytes): the file is damaged")
        return out


def _cast_on_meta(model: nn.Module, dtype: torch.dtype, keep_fp32: list[str]) -> None:
    """The dtypes `from_pretrained(dtype=...)` gives the parameters (diffusers' keep-in-fp32 rule)."""
    for mod_name, mod in model.named_modules():
        for leaf, p in list(mod._parameters.items()):
            if p is None or not p.is_floating_point():
                continue
            full = f"{mod_name}.{leaf}" if mod_name else leaf
            want = torch.float32 if any(k in full.split(".") for k in keep_fp32) else dtype
            if p.dtype != want:
                mod._parameters[leaf] = nn.Parameter(p.to(want), requires_grad=False)


def load_sharded_part(sub: str | Path, dtype: torch.dtype, device: str, group=None) -> nn.Module:
    """One denoiser part (a model directory's transformer/ or transformer_2/) loaded into its shards."""
    import diffusers
    from accelerate import init_empty_weights
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    from unlearn.errors import ConfigError
    from unlearn.models.spec import read_model_json
    from unlearn.sharding import backbone_mesh, shard_units

    sub = Path(sub)
    name = read_model_json(sub / "config.json").get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ConfigError(f"{sub / 'config.json'}: _class_name {name!r} is not a diffusers model class")
    files = _Files(sub)
    with init_empty_weights(include_buffers=False):
        model = cls.from_config(cls.load_config(sub))
    model.register_to_config(_name_or_path=str(sub))
    model.requires_grad_(False).eval()
    _cast_on_meta(model, dtype, list(cls._keep_in_fp32_modules or []))
    shard_units(model, backbone_mesh(device, group))
    buffers = {n: b for n, b in model.named_buffers()}  # real already: to_empty would wipe them
    model.to_empty(device=device)
    with torch.no_grad():
        for n, b in buffers.items():
            mod, _, leaf = n.rpartition(".")
            model.get_submodule(mod)._buffers[leaf] = b.to(device)
        for n, t in [*model.named_parameters(), *model.named_buffers()]:
            if n not in files.where:
                if n in buffers:
                    continue  # a non-persistent buffer: computed, not stored
                raise ConfigError(f"{sub}: weight {n} is missing from its safetensors files: the model "
                                  "directory is damaged or incomplete; download or convert it again")
            stored = files.entry(n)[2]["shape"]
            if list(stored) != list(t.shape):
                raise ConfigError(f"{sub}: weight {n} has shape {stored} in its file but {list(t.shape)} in "
                                  "config.json's model: the model directory is damaged; download it again")
            if isinstance(t, DTensor):
                local, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
                if local[0]:
                    t.to_local().copy_(files.read(n, offset[0], offset[0] + local[0]))
            else:
                t.copy_(files.read(n))
    return model


@contextlib.contextmanager
def sharded_loading(device: str, group=None):
    """While open, every denoiser part a model spec loads is loaded into this rank's shards (module doc)."""
    from unlearn.models.spec import PART_LOADER

    token = PART_LOADER.set(lambda sub, dtype: load_sharded_part(sub, dtype, device, group))
    try:
        yield
    finally:
        PART_LOADER.reset(token)
