"""`t2vu import-eraser --format t2vunlearning`: a file in T2VUnlearning's format (built here the way their
`save_cogvideo_eraser_from_transformer` writes it) converts exactly onto the tiny CogVideoX, and anything
that is not a plain tensor dict is refused with one line."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent


class TheirAdapterEraser(nn.Module):
    """T2VUnlearning's `AdapterEraser` (receler/erasers/utils.py): down -> nn.GELU() -> up."""

    def __init__(self, dim: int, mid_dim: int):
        super().__init__()
        self.down = nn.Linear(dim, mid_dim)
        self.act = nn.GELU()
        self.up = nn.Linear(mid_dim, dim)

    def forward(self, h):
        return self.up(self.act(self.down(h)))


class TheirCogVideoXWithEraser(nn.Module):
    """T2VUnlearning's `CogVideoXWithEraser` (receler/erasers/cogvideo_erasers.py): replaces a block's attn1."""

    def __init__(self, attn, adapter):
        super().__init__()
        self.attn, self.adapter = attn, adapter

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        hidden_states, encoder_hidden_states = self.attn(hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        return hidden_states + self.adapter(hidden_states), encoder_hidden_states


@pytest.fixture(scope="module")
def tiny():
    from unlearn.models.registry import resolve_model_path

    return resolve_model_path("builtin:tiny")


@pytest.fixture(scope="module")
def spec(tiny):
    from unlearn.models.families import spec_class

    return spec_class("cogvideox").from_pretrained(tiny, "float32")


def their_adapters(n_blocks: int, hidden: int, rank: int, dtype=torch.bfloat16) -> dict[int, TheirAdapterEraser]:
    g = torch.Generator().manual_seed(3)
    out = {}
    for i in range(n_blocks):
        a = TheirAdapterEraser(hidden, rank)
        with torch.no_grad():
            for p in a.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        out[i] = a.to(dtype)  # their erasers are saved in the transformer's dtype
    return out


def save_their_file(folder: Path, adapters: dict, rank: int, prefix: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = {f"{prefix}transformer_blocks.{i}.attn1.adapter": a.state_dict() for i, a in adapters.items()}
    torch.save(ckpt, folder / "eraser_weights.pt")
    (folder / "eraser_config.json").write_text(json.dumps({"eraser_type": "adapter", "eraser_rank": rank}, indent=4))
    return folder / "eraser_weights.pt"


def forward(spec, x, t, text):
    with torch.no_grad():
        return spec.velocity(x, t, text)


def test_converted_eraser_equals_their_adapter_applied_by_hand(spec, tiny, tmp_path):
    from unlearn.eraser import load_eraser, read_eraser
    from unlearn.eraser_import import import_eraser

    n = len(spec.blocks())
    hidden, rank = spec.hidden_size(), 4
    adapters = their_adapters(n, hidden, rank)
    src = save_their_file(tmp_path / "paper", adapters, rank)
    path, es = import_eraser("t2vunlearning", src, tmp_path / "ours", model_dir=tiny, target_concept="nudity")
    meta = read_eraser(path).meta
    assert (meta.num_blocks, meta.hidden_size, meta.rank, meta.block_indices) == (n, hidden, rank, list(range(n)))
    assert meta.model_family == "cogvideox" and meta.target_concept == "nudity"
    assert meta.extra["imported_from"]["eraser_config"] == {"eraser_type": "adapter", "eraser_rank": rank}

    g = torch.Generator().manual_seed(0)
    shape = spec.latent_shape(9, 32, 32)
    x = torch.randn((1, *shape), generator=g)
    t = torch.tensor([500])
    text = torch.randn((1, spec.text_len, 32), generator=g)
    base = forward(spec, x, t, text)

    handle = load_eraser(spec.transformer, path)
    ours = forward(spec, x, t, text)
    handle.remove()
    assert torch.equal(forward(spec, x, t, text), base)  # hooks left no trace

    originals = [blk.attn1 for blk in spec.transformer.transformer_blocks]
    try:  # their injection: replace each block's attn1 with the wrapper (adapters upcast like ours on fp32)
        for blk, attn, i in zip(spec.transformer.transformer_blocks, originals, range(n)):
            blk.attn1 = TheirCogVideoXWithEraser(attn, adapters[i].float())
        theirs = forward(spec, x, t, text)
    finally:
        for blk, attn in zip(spec.transformer.transformer_blocks, originals):
            blk.attn1 = attn
    assert (ours - base).abs().max() > 1e-3  # the eraser does something
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_flat_and_prefixed_keys_and_partial_blocks(spec, tmp_path):
    from unlearn.eraser_import import convert_t2vunlearning

    hidden, rank = spec.hidden_size(), 2
    adapters = their_adapters(2, hidden, rank, dtype=torch.float32)
    src = save_their_file(tmp_path / "a", adapters, rank, prefix="transformer.")
    es = convert_t2vunlearning(src)
    assert es.meta.block_indices == [0, 1] and es.meta.num_blocks == 2
    flat = {f"transformer_blocks.1.attn1.adapter.{k}": v for k, v in adapters[1].state_dict().items()}
    (tmp_path / "b").mkdir()
    torch.save(flat, tmp_path / "b" / "w.pt")
    es = convert_t2vunlearning(tmp_path / "b" / "w.pt", num_blocks=3, hidden_size=hidden)
    assert es.meta.block_indices == [1] and es.meta.num_blocks == 3
    assert torch.equal(es.erasers["1"].up.weight, adapters[1].up.weight)


class NotATensor:
    def __reduce__(self):  # what a malicious pickle would do on load
        return (print, ("this must never run",))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli.entry", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_cli_imports_and_refuses_non_tensor_files(spec, tiny, tmp_path):
    hidden, rank = spec.hidden_size(), 4
    src = save_their_file(tmp_path / "paper", their_adapters(len(spec.blocks()), hidden, rank), rank)
    r = _cli("import-eraser", "--format", "t2vunlearning", str(src), str(tmp_path / "ours"), "--model", "builtin:tiny")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["rank"] == rank and info["blocks"] == len(spec.blocks())
    assert (tmp_path / "ours" / "eraser.safetensors").is_file()

    bad = tmp_path / "bad"
    bad.mkdir()
    cases = {
        "object.pt": {"transformer_blocks.0.attn1.adapter": NotATensor()},  # plain pickle
        "object_torch.pt": {"transformer_blocks.0.attn1.adapter": NotATensor()},  # torch.save
        "list.pt": [torch.zeros(2)],
        "number.pt": {"transformer_blocks.0.attn1.adapter": {"down.weight": 3}},
    }
    for name, obj in cases.items():
        with open(bad / name, "wb") as f:
            (pickle.dump(obj, f) if name == "object.pt" else torch.save(obj, f))
    torch.save({"double_blocks.0.adapter": {"down.weight": torch.zeros(2, 2)}}, bad / "other_key.pt")
    for name in (*cases, "other_key.pt"):
        out = tmp_path / f"out-{name}"
        r = _cli("import-eraser", "--format", "t2vunlearning", str(bad / name), str(out))
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2, (name, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("error:") and name in lines[0], (name, r.stderr)
        assert "this must never run" not in r.stdout + r.stderr and "Traceback" not in r.stderr
        assert not out.exists()
    r = _cli("import-eraser", "--format", "t2vunlearning", str(src), str(tmp_path / "ours"))
    assert r.returncode == 2 and "--overwrite" in r.stderr
