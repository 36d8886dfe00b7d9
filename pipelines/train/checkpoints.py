"""Ray Train checkpoints of an eraser training, and exporting the final one.

A checkpoint folder holds the DeepSpeed engine state (`ds/`, one ZeRO shard per rank), the
eraser in its published format (`eraser/`, gathered under ZeRO-3), `state.json` (step, world
size, attempts) and `metrics.jsonl` (the curve so far). Saving is collective: every rank
enters `save_checkpoint`, rank 0 also writes the eraser and the records.

Integrity: DeepSpeed resumes through `torch.load(weights_only=False)`, i.e. it unpickles files
that live on shared storage. Every rank writes `manifest-rank<r>.json` (sha256 of each file it
wrote) next to its files, and `verify_manifest` checks every file against them before DeepSpeed
opens anything; a changed, truncated, added or unlisted file is refused. This catches corruption,
partial uploads and files swapped in from elsewhere; it does not stop someone who can write the
storage and rewrite the manifests too (keep checkpoint storage writable only by the job).
"""

from __future__ import annotations

import json
from pathlib import Path

from unlearn.fsutil import atomic_copy_dir, atomic_write_bytes, atomic_write_json, atomic_write_text, file_sha256

CHECKPOINT_TAG = "ds"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"
ERASER_DIR = "eraser"
MANIFEST_GLOB = "manifest-rank*.json"


class CheckpointIntegrityError(RuntimeError):
    pass


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.match(MANIFEST_GLOB))


def write_manifest(folder: Path, rank: int) -> None:
    """sha256 of every file this rank wrote into its checkpoint folder (its own temporary directory)."""
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): file_sha256(p) for p in _files(folder)}
    atomic_write_json(folder / f"manifest-rank{rank}.json", {"rank": rank, "sha256": files})


def verify_manifest(folder: Path) -> int:
    """Check every checkpoint file against the ranks' manifests; returns how many were verified."""
    folder = Path(folder)
    manifests = sorted(folder.glob(MANIFEST_GLOB))
    if not manifests:
        raise CheckpointIntegrityError(
            f"{folder} has no checkpoint manifest ({MANIFEST_GLOB}); refusing to unpickle its files. "
            "Resume from a checkpoint this version wrote, or start again with --no-resume."
        )
    listed: dict[str, str] = {}
    for m in manifests:
        listed.update(json.loads(m.read_text())["sha256"])
    present = {p.relative_to(folder).as_posix(): p for p in _files(folder)}
    unlisted = sorted(set(present) - set(listed))
    missing = sorted(set(listed) - set(present))
    if unlisted or missing:
        raise CheckpointIntegrityError(
            f"{folder}: files do not match the checkpoint manifests (not listed: {unlisted[:4]}, missing: {missing[:4]}); "
            "refusing to load it. Start again with --no-resume or restore the checkpoint from a good copy."
        )
    for rel, digest in listed.items():
        if file_sha256(present[rel]) != digest:
            raise CheckpointIntegrityError(
                f"{folder / rel}: sha256 differs from the checkpoint manifest (corrupted or replaced); refusing to "
                "load it. Start again with --no-resume or restore the checkpoint from a good copy."
            )
    return len(listed)


def gathered(params):
    """All-gather ZeRO-3 partitions for reading (no-op for ZeRO-2). Collective: every rank enters."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)


def read_checkpoint_state(ckpt) -> tuple[dict | None, list[dict]]:
    """(state.json, the metrics rows up to its step) of a reported checkpoint; (None, []) if none."""
    if ckpt is None:
        return None, []
    from unlearn.trainer import read_metrics

    with ckpt.as_directory() as d:
        d = Path(d)
        if not (d / STATE_FILE).exists():
            return None, []
        state = json.loads((d / STATE_FILE).read_text())
        return state, read_metrics(d / METRICS_FILE, upto_step=state["step"])


def restore_eraser_weights(ckpt, eraser_set) -> None:
    """Load only the eraser weights of a checkpoint (the optimizer state is not reusable)."""
    from unlearn.eraser import read_eraser

    with ckpt.as_directory() as d:
        saved = read_eraser(Path(d) / ERASER_DIR)
    eraser_set.load_state_dict(saved.state_dict())


def load_engine_state(engine, ckpt, step: int) -> None:
    """Resume the DeepSpeed engine (weights + ZeRO optimizer shards) from a checkpoint."""
    with ckpt.as_directory() as d:
        verify_manifest(Path(d))  # before DeepSpeed unpickles anything
        load_path, _ = engine.load_checkpoint(d, tag=CHECKPOINT_TAG, load_lr_scheduler_states=False)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint reported at step {step}")


def save_checkpoint(folder: Path, engine, session, *, rank: int, state: dict, history: list[dict]) -> None:
    """Write one checkpoint into `folder`. Collective: every rank calls it."""
    from unlearn.eraser import save_eraser

    # Every rank writes its own ZeRO shard (rank 0 also the module states).
    engine.save_checkpoint(str(folder), tag=CHECKPOINT_TAG, client_state={"step": state["step"]})
    with gathered(session.trainable_parameters()):
        if rank == 0:
            save_eraser(session.eraser_set, folder / ERASER_DIR)
    if rank == 0:
        atomic_write_json(folder / STATE_FILE, state, indent=None)
        atomic_write_text(folder / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))
    write_manifest(folder, rank)


def export_result(result, out: Path) -> dict:
    """Copy the final eraser + training curve out of the last reported checkpoint into `out`."""
    from unlearn.eraser import read_eraser

    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {result.path} reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        d = Path(d)
        read_eraser(d / ERASER_DIR)  # validates the files before they are published
        atomic_copy_dir(d / ERASER_DIR, out / ERASER_DIR)
        atomic_write_bytes(out / METRICS_FILE, (d / METRICS_FILE).read_bytes())
        state = json.loads((d / STATE_FILE).read_text())
    atomic_write_text(out / "checkpoint_path.txt", str(result.checkpoint.path) + "\n")
    return state
