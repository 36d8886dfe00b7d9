"""Checkpoints (unlearn.checkpoint: one layout for every engine) are verified against per-rank sha256 manifests before anything is unpickled."""

from __future__ import annotations

import pytest

from unlearn.checkpoint import CheckpointIntegrityError, verify_manifest, write_manifest


def make_ranks(root):
    """Two ranks' folders as Ray merges them into one checkpoint directory."""
    ck = root / "ck"
    for rank in (0, 1):
        d = root / f"r{rank}"
        (d / "engine" / "ds").mkdir(parents=True)
        (d / "engine" / "ds" / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(bytes([rank]) * 1000)
        if rank == 0:
            (d / "state.json").write_text('{"step": 4}')
        write_manifest(d, rank)
        for p in d.rglob("*"):
            if p.is_file():
                dest = ck / p.relative_to(d)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(p.read_bytes())
    return ck


def test_a_good_checkpoint_verifies(tmp_path):
    assert verify_manifest(make_ranks(tmp_path)) == 3


@pytest.mark.parametrize("fault", ["flip", "truncate", "extra", "missing", "no_manifest"])
def test_tampered_checkpoints_are_refused(tmp_path, fault):
    ck = make_ranks(tmp_path)
    shard = ck / "engine" / "ds" / "zero_pp_rank_1_optim_states.pt"
    if fault == "flip":
        data = bytearray(shard.read_bytes())
        data[10] ^= 1
        shard.write_bytes(bytes(data))
    elif fault == "truncate":
        shard.write_bytes(shard.read_bytes()[:100])
    elif fault == "extra":
        (ck / "engine" / "ds" / "evil.pt").write_bytes(b"x")
    elif fault == "missing":
        shard.unlink()
    else:
        for m in ck.glob("manifest-rank*.json"):
            m.unlink()
    with pytest.raises(CheckpointIntegrityError, match="refusing"):
        verify_manifest(ck)
