"""On-disk cache of the trajectory pools (`train.xt_source: trajectory`): sampled once, reused by every trial and run.

A pool is a pure function of the frozen model, the prompt's embedding and the sampler settings (each prompt's
trajectories come from a seed derived from (train.seed, prompt): `unlearn.xt_sources.prompt_seed`), so the
trials of a search -- which differ in eraser and loss settings only -- would otherwise sample the same pool
again each: prompts x pool_size x steps x 2 (CFG) transformer forwards per trial. The trainer reads it here.

Key, as the text-embedding cache's (`unlearn.embedding_cache`, whose entry checks this reuses):
- the folder: a fingerprint of the family, the backbone (`unlearn.base_fingerprint`: its config and sampled
  weights), the scheduler's config, the latent shape, sampler steps, guidance scale, pool size, seed, the model
  dtype, the device type (a GPU and a CPU sampler round differently) and the unconditional embedding's checksum;
- the entry: one safetensors file per (prompt, checksum of that prompt's embedding): another text encoder or
  max length gives another embedding, so another entry. Its metadata holds the prompt and the sha256 of the
  states and the times, checked on every read: a renamed, changed or truncated entry is refused
  (`CacheEntryError`, one line naming the file and the fix: delete it), never trained on. Written atomically.
Cost: disk, the pool in the model dtype (the host term of `t2vu plan`, e.g. 7 GB for 20 prompts x 8 x 20 steps
at 49x480x720 in bf16) and one read per prompt per run; a meta-device run (no values) has no cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from unlearn import base_fingerprint
from unlearn.embedding_cache import CacheEntryError, tensor_sha256
from unlearn.fsutil import atomic_path

ENTRY_VERSION = "1"


def _scheduler_config(spec) -> dict:
    cfg = dict(getattr(spec.scheduler, "config", {}) or {})
    return {k: v for k, v in sorted(cfg.items()) if not k.startswith("_")}


def pool_fingerprint(spec, family: str, latent_shape, num_steps: int, guidance: float, pool_size: int, seed: int,
                     dtype: torch.dtype, device_type: str, uncond: torch.Tensor) -> str:
    """The folder's key: everything a pool depends on besides the prompt and its embedding."""
    key = {"family": family, "backbone": base_fingerprint.of_module(spec.transformer)["digest"],
           "scheduler": _scheduler_config(spec), "latent_shape": list(latent_shape), "steps": int(num_steps),
           "guidance": float(guidance), "pool_size": int(pool_size), "seed": int(seed), "dtype": str(dtype),
           "device": device_type, "uncond": tensor_sha256(uncond), "version": ENTRY_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


class TrajectoryCache:
    """The pools of one model + sampler setting; `get`/`put` one prompt's (states, times)."""

    def __init__(self, root: str | Path, fingerprint: str):
        self.fingerprint = fingerprint
        self.dir = Path(root) / fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, prompt: str, emb: torch.Tensor) -> Path:
        return self.dir / (hashlib.sha256(f"{prompt}\0{tensor_sha256(emb)}".encode()).hexdigest()[:32] + ".safetensors")

    def _damaged(self, path: Path, why: str) -> CacheEntryError:
        return CacheEntryError(f"trajectory cache entry {path} {why}; it cannot be trained on. Delete it (or the whole "
                               f"cache folder {self.dir}) and rerun: missing pools are sampled again")

    def get(self, prompt: str, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The cached (states, times) of `prompt` with embedding `emb`, checked; None when not cached."""
        from safetensors import safe_open

        path = self._path(prompt, emb)
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                states, times = f.get_tensor("states"), f.get_tensor("times")
        except Exception as exc:  # noqa: BLE001 - SafetensorError / OSError on a truncated or damaged file
            raise self._damaged(path, f"is not a readable safetensors file ({type(exc).__name__})") from None
        if meta.get("prompt") != prompt:
            raise self._damaged(path, f"holds the pool of {meta.get('prompt')!r}, not of {prompt!r}")
        if meta.get("sha256") != tensor_sha256(states) + tensor_sha256(times):
            raise self._damaged(path, "does not match its checksum (its values were changed after it was written)")
        return states, times

    def put(self, prompt: str, emb: torch.Tensor, states: torch.Tensor, times: torch.Tensor) -> None:
        states, times = states.detach().cpu().contiguous(), times.detach().cpu().contiguous()
        meta = {"prompt": prompt, "sha256": tensor_sha256(states) + tensor_sha256(times), "version": ENTRY_VERSION}
        with atomic_path(self._path(prompt, emb)) as tmp:
            save_file({"states": states, "times": times}, str(tmp), metadata=meta)
