"""Per-row results, written atomically, and the resume logic built on them.

Each finished row is one JSON file `rows/<row id>.json` (temporary file + `os.replace`,
so a killed run leaves either the whole file or none). A row file carries the
fingerprint of everything that produced it (model, eraser weights, generation settings,
classifier, metrics, prompt, seed); a rerun skips rows whose file exists with the same
fingerprint and recomputes the rest. Row ids are stable (`t00003`, `p00000`), so there is
exactly one result per row however often a run is interrupted. `results.csv` is rebuilt
from the row files at the end of every run (never read back: resuming reads the row files), its
cells escaped by `unlearn.csvsafe` (a prompt starting with `=` is written `'=...`; `unescape_cell`
or `read_rows` there gives the original back).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from unlearn.csvsafe import csv_text
from unlearn.fsutil import atomic_write_json, atomic_write_text, json_default

log = logging.getLogger(__name__)

ROWS_DIR = "rows"
# Leading columns of results.csv; classifier, metric and extra CSV columns follow.
LEAD_COLUMNS = [
    "id", "set", "index", "prompt", "seed", "seed_source", "concept", "concept_type", "prompt_tokens", "truncated",
    "degenerate_base", "degenerate_erased", "video_base", "gif_base", "video_erased", "gif_erased",
]


def digest(obj: Any, n: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, default=json_default).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


class ResultStore:
    """The `rows/` folder of an eval output directory."""

    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir)
        self.rows_dir = self.root / ROWS_DIR
        self.rows_dir.mkdir(parents=True, exist_ok=True)

    def path(self, row_id: str) -> Path:
        return self.rows_dir / f"{row_id}.json"

    def read(self, row_id: str) -> dict | None:
        p = self.path(row_id)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, OSError) as exc:  # cannot happen with atomic writes; be safe
            log.warning("ignoring unreadable row file %s: %s", p, exc)
            return None

    def finished(self, fingerprints: dict[str, str]) -> tuple[dict[str, dict], int]:
        """Rows already done with a matching fingerprint, and the number of stale row files."""
        done, stale = {}, 0
        for row_id, fp in fingerprints.items():
            rec = self.read(row_id)
            if rec is None:
                continue
            if rec.get("fingerprint") == fp:
                done[row_id] = rec
            else:
                stale += 1
        return done, stale

    def write(self, result: dict) -> Path:
        return atomic_write_json(self.path(result["id"]), result)


# --- results.csv --------------------------------------------------------------------------------

def flatten(result: dict) -> dict[str, Any]:
    """One results.csv row from a row result."""
    flat: dict[str, Any] = {k: result.get(k, "") for k in ("id", "set", "index", "prompt", "seed", "seed_source", "concept",
                                                           "concept_type", "prompt_tokens", "truncated")}
    if result.get("guidance") is not None:  # a per-row guidance column (eval.prompts)
        flat["guidance"] = result["guidance"]
    for which in ("base", "erased"):
        # eval.quality: a degenerate video is left out of the rates; why, in degenerate_reasons_*.
        q = (result.get("quality") or {}).get(which)
        flat[f"degenerate_{which}"] = bool(q["degenerate"]) if q else ""
        if q and q["degenerate"]:
            flat[f"degenerate_reasons_{which}"] = q["reasons"]
    for which in ("base", "erased"):
        files = (result.get("files") or {}).get(which) or {}
        flat[f"video_{which}"] = files.get("video", "")
        flat[f"gif_{which}"] = files.get("gif", "")
    for which in ("base", "erased"):
        rec = (result.get("records") or {}).get(which) or {}
        for k, v in rec.items():
            flat[f"{k}_{which}"] = v
    for k in ("psnr", "ssim", "clip_score_base", "clip_score_erased", "gen_seconds", "score_seconds"):
        if result.get(k) is not None:
            flat[k] = result[k]
    mapped = set(result.get("mapped_columns") or [])
    for k, v in (result.get("fields") or {}).items():
        if k not in mapped:
            flat[f"csv.{k}"] = v
    return flat


def results_csv_text(results: list[dict]) -> str:
    flats = [flatten(r) for r in results]
    cols: list[str] = list(LEAD_COLUMNS)
    for f in flats:
        for k in f:
            if k not in cols:
                cols.append(k)
    # formula-leading text and control characters escaped, numbers kept (unlearn.csvsafe)
    return csv_text(cols, ({k: _cell(f.get(k, "")) for k in cols} for f in flats))


def _cell(v):
    if isinstance(v, float):
        return repr(round(v, 6))
    return v


def write_results_csv(results: list[dict], path: str | Path) -> Path:
    return atomic_write_text(path, results_csv_text(results))
