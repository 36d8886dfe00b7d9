"""On-disk text-embedding cache: encode every prompt once, never load the text encoder in trainers.

For real CogVideoX the T5-XXL encoder is ~9 GB; it must not sit in every Ray
worker. The driver fills the cache once; workers read `get(prompts)`. Loading and
encoding are the model family's answers (`spec.load_tokenizer/load_text_encoder/encode_prompts`).
Key: a fingerprint of the family, the encode dtype (a bf16 run must not reuse fp32
embeddings, nor the reverse), tokenizer + encoder (tokenizer file contents, encoder
config, weight file names/sizes plus a hash of each file's first and last MiB —
full hashing of 9 GB would cost ~20 s per run) and the max length; then one
safetensors file per prompt, written atomically (`unlearn.fsutil`), so a
killed fill leaves no half-written entries and a rerun only encodes what is missing.

Each entry carries its prompt and the sha256 of its tensor (dtype, shape, bytes) in the file's metadata,
checked on every read: an entry renamed to another prompt's key, overwritten with zeros, truncated or
otherwise damaged is refused (`CacheEntryError`, one line naming the file and the fix: delete it), never
used as that prompt's embedding. Entries written before the checksum existed count as missing and are
encoded again by the next `fill`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from unlearn.config import ConfigError
from unlearn.fsutil import atomic_path
from unlearn.models.families import spec_class

MIB = 1 << 20
ENTRY_VERSION = "2"  # 2: prompt + sha256 in the metadata, verified on read


class CacheEntryError(ConfigError):
    """A cache entry that is unreadable or is not what its name says (the message names the file and the fix)."""


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (any dtype, bf16 included)."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype};{tuple(t.shape)};".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _file_digest(path: Path, h) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(MIB))
        if size > 2 * MIB:
            f.seek(-MIB, os.SEEK_END)
            h.update(f.read(MIB))


def encoder_fingerprint(model_dir: str | Path, max_length: int, dtype: str = "float32", family: str = "cogvideox") -> str:
    model_dir = Path(model_dir)
    h = hashlib.sha256(f"family={family};dtype={dtype};max_length={max_length}".encode())
    for sub in ("tokenizer", "text_encoder"):
        d = model_dir / sub
        if not d.is_dir():
            raise FileNotFoundError(f"{d} missing: the embedding cache needs the model's {sub}/ directory")
        for p in sorted(d.rglob("*")):
            if p.is_file():
                _file_digest(p, h)
    return h.hexdigest()[:20]


def prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:32]


class EmbeddingCache:
    """Embeddings of one (family, model directory, encode dtype, max length); stored as encoded (that dtype)."""

    def __init__(self, root: str | Path, model_dir: str | Path, max_length: int, dtype: str = "float32",
                 family: str = "cogvideox"):
        self.model_dir = Path(model_dir)
        self.max_length = max_length
        self.dtype, self.family = dtype, family
        self.fingerprint = encoder_fingerprint(model_dir, max_length, dtype, family)
        self.dir = Path(root) / self.fingerprint
        self.dir.mkdir(parents=True, exist_ok=True)
        self.encoder_loads = 0  # how many times fill() had to load the text encoder (tests assert on it)

    def _path(self, prompt: str) -> Path:
        return self.dir / f"{prompt_key(prompt)}.safetensors"

    def missing(self, prompts) -> list[str]:
        """Prompts without a usable entry: no file, or an entry from before checksums (encoded again)."""
        return [p for p in dict.fromkeys(prompts) if not self._path(p).exists() or self._legacy(p)]

    def _damaged(self, path: Path, why: str) -> CacheEntryError:
        return CacheEntryError(
            f"embedding cache entry {path} {why}; it cannot be used as that prompt's text embedding. Delete it "
            f"(or the whole cache folder {self.dir}) and rerun: missing entries are encoded again"
        )

    def _metadata(self, path: Path) -> dict:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return f.metadata() or {}
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on a damaged file
            raise self._damaged(path, f"is not a readable safetensors file ({type(exc).__name__}: "
                                      f"{' '.join(str(exc).split())[:120]})") from None

    def _legacy(self, prompt: str) -> bool:
        return self._metadata(self._path(prompt)).get("t2vu_cache_version") != ENTRY_VERSION

    def fill(self, prompts, batch_size: int = 8) -> int:
        """Encode the prompts not yet cached (in the cache's dtype); returns how many were encoded."""
        todo = self.missing(prompts)
        if not todo:
            return 0
        spec = spec_class(self.family)
        tokenizer = spec.load_tokenizer(self.model_dir)
        encoder = spec.load_text_encoder(self.model_dir, self.dtype)
        self.encoder_loads += 1
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            emb = spec.encode_prompts(tokenizer, encoder, chunk, self.max_length)
            for prompt, e in zip(chunk, emb):
                self._write(prompt, e)
        del tokenizer, encoder
        return len(todo)

    def _write(self, prompt: str, emb: torch.Tensor) -> None:
        emb = emb.detach().cpu().contiguous()
        meta = {"prompt": prompt, "sha256": tensor_sha256(emb), "t2vu_cache_version": ENTRY_VERSION}
        with atomic_path(self._path(prompt)) as tmp:
            save_file({"emb": emb}, str(tmp), metadata=meta)

    def _read(self, prompt: str) -> torch.Tensor:
        """One entry, checked: readable, written for `prompt`, its tensor as written (CacheEntryError otherwise)."""
        from safetensors import safe_open

        path = self._path(prompt)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                emb = f.get_tensor("emb")
        except Exception as exc:  # noqa: BLE001 - SafetensorError / OSError on a truncated or damaged file
            raise self._damaged(path, f"is not a readable safetensors file ({type(exc).__name__}: "
                                      f"{' '.join(str(exc).split())[:120]})") from None
        if meta.get("prompt") != prompt:
            raise self._damaged(path, f"holds the embedding of {meta.get('prompt')!r}, not of {prompt!r} (a file "
                                      "renamed or copied over another)")
        if meta.get("sha256") != tensor_sha256(emb):
            raise self._damaged(path, "does not match its checksum (its values were changed after it was written)")
        return emb

    def get(self, prompts) -> torch.Tensor:
        missing = self.missing(prompts)
        if missing:
            raise KeyError(f"{len(missing)} prompts are not in the embedding cache {self.dir} (e.g. {missing[0]!r}); call fill() first")
        return torch.stack([self._read(p) for p in prompts])

    def get_dict(self, prompts) -> dict[str, torch.Tensor]:
        uniq = list(dict.fromkeys(prompts))
        return dict(zip(uniq, self.get(uniq)))

    def manifest(self) -> dict:
        return {"dir": str(self.dir), "fingerprint": self.fingerprint, "entries": len(list(self.dir.glob("*.safetensors")))}

    def __repr__(self) -> str:
        return f"EmbeddingCache({json.dumps(self.manifest())})"
