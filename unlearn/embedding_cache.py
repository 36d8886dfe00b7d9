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
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from unlearn.fsutil import atomic_path
from unlearn.models.families import spec_class

MIB = 1 << 20


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
        return [p for p in dict.fromkeys(prompts) if not self._path(p).exists()]

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
        with atomic_path(self._path(prompt)) as tmp:
            save_file({"emb": emb.detach().cpu().contiguous()}, str(tmp), metadata={"prompt": prompt})

    def get(self, prompts) -> torch.Tensor:
        missing = self.missing(prompts)
        if missing:
            raise KeyError(f"{len(missing)} prompts are not in the embedding cache {self.dir} (e.g. {missing[0]!r}); call fill() first")
        return torch.stack([load_file(str(self._path(p)))["emb"] for p in prompts])

    def get_dict(self, prompts) -> dict[str, torch.Tensor]:
        uniq = list(dict.fromkeys(prompts))
        return dict(zip(uniq, self.get(uniq)))

    def manifest(self) -> dict:
        return {"dir": str(self.dir), "fingerprint": self.fingerprint, "entries": len(list(self.dir.glob("*.safetensors")))}

    def __repr__(self) -> str:
        return f"EmbeddingCache({json.dumps(self.manifest())})"
