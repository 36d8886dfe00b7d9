"""One rule for where the model runs: `train.device` (auto | cpu | cuda | cuda:N | meta).

`meta` is the test stand-in for a GPU: a model built there runs real-size forward and
backward without allocating, and any tensor created on the CPU that meets it raises
(`Tensor on device meta is not on the expected device cpu!`), so a CPU test catches
every tensor a GPU run would have put on the wrong device.
"""

from __future__ import annotations

import torch


def resolve_device(setting: str = "auto", assigned: torch.device | str | None = None) -> torch.device:
    """The device a process trains on.

    `assigned` is what the launcher gave this process (Ray Train's `get_device()`): it wins
    for `auto` and `cuda`, so every worker uses its own GPU; cpu / meta / cuda:N are taken as set.
    """
    if setting in ("cpu", "meta") or setting.startswith("cuda:"):
        dev = torch.device(setting)
    elif assigned is not None and setting in ("auto", "cuda") and torch.device(assigned).type != "cpu":
        dev = torch.device(assigned)
    elif setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cuda")
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        from unlearn.config import ConfigError

        raise ConfigError(f"train.device is {setting!r} but this process sees no CUDA GPU; use train.device: auto or cpu")
    return dev
