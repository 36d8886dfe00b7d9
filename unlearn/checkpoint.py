"""The one checkpoint layout of an eraser training, whoever writes it (one process or N workers).

    <checkpoint>/
      state.json            {"format": 2, "step", "attempts", "global_steps", "engine", "world_size", "zero_stage"}
      metrics.jsonl         the training curve up to `step`
      eraser/               eraser.safetensors + eraser_config.json (the published format; gathered under ZeRO-3)
      engine/               the optimizer state, in the engine's own files: plain PyTorch writes
                            optimizer.pt; DeepSpeed writes its tag folder (one ZeRO shard per rank)
      manifest-rank<r>.json sha256 of every file rank r wrote

`t2vu train` keeps its last one in <output>/checkpoint/ (`unlearn.loop.LocalStore`); `--distributed` and
Tune trials report theirs to Ray Train (`pipelines.train.checkpoints.RayCheckpointStore`). Any loop resumes
any checkpoint of its config: the eraser weights, step and curve always; the optimizer state only when
the engine matches (`engine`, `world_size`, `zero_stage`; ZeRO shards are tied to the world size), else
it starts fresh with a warning. Checkpoints of the earlier layouts (before format 2) are refused with one
line (`LegacyCheckpointError`): finish such a run with the version that started it, or --no-resume.

Integrity: a resume unpickles files that may live on shared storage (DeepSpeed through
`torch.load(weights_only=False)`), so every rank writes `manifest-rank<r>.json` next to its files and
`verify_manifest` checks every file against them before anything is opened; a changed, truncated,
added or unlisted file is refused. This catches corruption, partial uploads and files swapped in from
elsewhere; it does not stop someone who can write the storage and rewrite the manifests too (keep
checkpoint storage writable only by the job).
"""

from __future__ import annotations

import json
from pathlib import Path

from unlearn.config import ConfigError
from unlearn.fsutil import atomic_copy_dir, atomic_write_bytes, atomic_write_json, atomic_write_text, file_sha256

FORMAT = 2
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"
ERASER_DIR = "eraser"
ENGINE_DIR = "engine"
CHECKPOINT_DIR = "checkpoint"  # a single-process run's last checkpoint, under its output folder
MANIFEST_GLOB = "manifest-rank*.json"
# What must match for the optimizer state to load; anything else restores the weights only.
ENGINE_KEYS = ("engine", "world_size", "zero_stage")


class CheckpointIntegrityError(RuntimeError):
    pass


class LegacyCheckpointError(ConfigError):
    pass


def read_metrics(path: Path, upto_step: int | None = None) -> list[dict]:
    """The rows of a metrics.jsonl (a line cut by a kill is skipped), up to `upto_step` if given."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if upto_step is None or r["step"] <= upto_step:
            rows.append(r)
    return rows


def metrics_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# --- manifests -------------------------------------------------------------------------------------------

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


# --- reading ---------------------------------------------------------------------------------------------

def read_state(folder: Path | None) -> dict | None:
    """state.json of a checkpoint folder (None: no folder or no checkpoint in it yet); an earlier layout is refused."""
    if folder is None or not (Path(folder) / STATE_FILE).exists():
        return None
    state = json.loads((Path(folder) / STATE_FILE).read_text())
    if state.get("format") != FORMAT:
        raise LegacyCheckpointError(
            f"{folder} is a checkpoint of an earlier t2vu layout (format {state.get('format', 1)}, this version "
            f"reads {FORMAT}); finish that run with the version that started it, or rerun with --no-resume "
            "to train again from step 0"
        )
    return state


def same_engine(state: dict, engine_state: dict) -> bool:
    return all(state.get(k) == engine_state.get(k) for k in ENGINE_KEYS)


def restore_eraser(folder: Path, eraser_set) -> None:
    """Load a checkpoint's eraser weights into `eraser_set`, refusing one of another config."""
    from unlearn.eraser import read_eraser

    saved = read_eraser(Path(folder) / ERASER_DIR)
    if saved.meta.config_digest != eraser_set.meta.config_digest:
        raise ConfigError(
            f"{folder} was written by a different config (digest {saved.meta.config_digest} vs "
            f"{eraser_set.meta.config_digest}); use a new --output or delete the folder"
        )
    eraser_set.load_state_dict(saved.state_dict())


# --- writing ---------------------------------------------------------------------------------------------

def write_checkpoint(folder: Path, engine, session, *, rank: int, state: dict, history: list[dict]) -> None:
    """Write one checkpoint into `folder` (empty, this rank's own). Collective: every rank calls it."""
    from unlearn.eraser import save_eraser

    folder = Path(folder)
    engine.save(folder / ENGINE_DIR, step=state["step"])  # every rank its own shard (DeepSpeed)
    with engine.gathered(session.trainable_parameters()):  # ZeRO-3: all ranks take part in the gather
        if rank == 0:
            save_eraser(session.eraser_set, folder / ERASER_DIR)
    if rank == 0:
        atomic_write_json(folder / STATE_FILE, {"format": FORMAT, **state}, indent=None)
        atomic_write_text(folder / METRICS_FILE, metrics_text(history))
    write_manifest(folder, rank)


def export(folder: Path, out: Path) -> dict:
    """Publish a finished run's eraser and curve from its last checkpoint into `out`; returns its state."""
    from unlearn.eraser import read_eraser

    folder = Path(folder)
    read_eraser(folder / ERASER_DIR)  # validates the files before they are published
    atomic_copy_dir(folder / ERASER_DIR, out / ERASER_DIR)
    atomic_write_bytes(out / METRICS_FILE, (folder / METRICS_FILE).read_bytes())
    return json.loads((folder / STATE_FILE).read_text())
