"""Which ops autocast runs in fp32 on a device type, asked of the installed torch's own autocast kernels.

CUDA and CPU autocast keep different op lists (aten/src/ATen/autocast_mode.cpp): CUDA's `fp32` policy
runs layer_norm, group_norm, rms_norm, softmax, ... in fp32 whatever the input dtype; CPU autocast runs
them in the input dtype. For the memory plan this decides the bytes of what a norm saves for backward
(its input, cast to fp32 by autocast) and of the norm's output, so a plan for `cuda` must not follow
what a CPU run measures (unlearn/models/cogvideox_memory.py; Wan's blocks cast to fp32 themselves).

The rule is not copied from the docs into a table: each op in PROBES is run under autocast and its output
dtype read. On CPU (and on a machine with CUDA) with tiny real tensors; for CUDA on a machine without
one, on FakeTensors of device cuda: no memory, no kernel -- torch's AutocastCUDA kernel does the cast,
the fake kernel the shape and dtype. `torch.autocast("cuda")` refuses when CUDA is unavailable, so the
CUDA autocast state is set through torch's own switches (`torch.set_autocast_enabled`), and restored.
A torch upgrade that moves an op between lists moves the plan with it (tests/test_autocast_plan.py).
Cost: one import of torch's fake-tensor module and a few ms, once per process (cached).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F

# The ops a transformer block's saved tensors and activations pass through, by the name torch's lists use.
PROBES = {
    "layer_norm": lambda x: F.layer_norm(x, x.shape[-1:]),
    "rms_norm": lambda x: F.rms_norm(x, x.shape[-1:]),
    "group_norm": lambda x: F.group_norm(x, 2),  # [N, C] with C = 4: two groups
    "softmax": lambda x: torch.softmax(x, -1),
    "gelu": F.gelu,
    "silu": F.silu,
    "linear": lambda x: F.linear(x, x),
    "scaled_dot_product_attention": lambda x: F.scaled_dot_product_attention(x, x, x),
}


@contextlib.contextmanager
def _autocast_on(device_type: str, dtype: torch.dtype):
    """Autocast on `device_type` without torch.autocast's availability check (CUDA on a CPU-only machine)."""
    was, was_dtype = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    torch.set_autocast_enabled(device_type, True)
    torch.set_autocast_dtype(device_type, dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled(device_type, was)
        torch.set_autocast_dtype(device_type, was_dtype)


@functools.lru_cache(maxsize=None)
def autocast_output_dtype(device_type: str, op: str, dtype: torch.dtype = torch.bfloat16) -> torch.dtype:
    """The dtype `op` returns under `dtype` autocast on `device_type`, for an input already in `dtype`."""
    probe = PROBES[op]
    real = device_type == "cpu" or (device_type == "cuda" and torch.cuda.is_available())
    with torch.no_grad():
        if real:
            x = torch.ones(4, 4, dtype=dtype, device=device_type)
            with torch.autocast(device_type, dtype=dtype):
                return probe(x).dtype
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode(), _autocast_on(device_type, dtype):
            return probe(torch.empty(4, 4, dtype=dtype, device=device_type)).dtype


def fp32_ops(device_type: str, dtype: torch.dtype = torch.bfloat16) -> frozenset[str]:
    """The ops of PROBES that `dtype` autocast on `device_type` runs in fp32 (CUDA: the norms and softmax)."""
    return frozenset(op for op in PROBES if autocast_output_dtype(device_type, op, dtype) == torch.float32)
