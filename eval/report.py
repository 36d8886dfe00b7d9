"""Reports of an eval run: `results.csv`, the base-vs-erased GIF grid, `report.md`, `summary.json`.

The grid shows the first `output.grid_rows` rows of each prompt set, one row per prompt:
its id, the base video and the erased video side by side, animated, built from the
per-row GIF previews (or the mp4s when previews are off), so it also works after a resume.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

GRID_NAME = "grid.gif"
LABEL_W = 56
HEADER_H = 14


def _load_frames(output_dir: Path, files: dict | None) -> np.ndarray | None:
    from eval.generate import read_video

    if not files:
        return None
    for key in ("gif", "video"):
        rel = files.get(key)
        if rel and (output_dir / rel).is_file():
            try:
                return read_video(output_dir / rel)
            except Exception as exc:  # noqa: BLE001 - a preview must not fail the run
                log.warning("cannot read %s: %s", output_dir / rel, exc)
    return None


def make_grid(results: list[dict], output_dir: str | Path, rows: int = 8, height: int = 96, fps: int = 8,
              name: str = GRID_NAME) -> Path | None:
    """Animated GIF: one line per prompt (first `rows` of each set), columns base | erased."""
    from PIL import Image, ImageDraw

    from eval.generate import resize_frames, save_gif_images

    output_dir = Path(output_dir)
    picked: list[dict] = []
    for set_name in ("target", "preserve"):
        picked += [r for r in results if r["set"] == set_name][:rows]
    lines = []
    for r in picked:
        files = r.get("files") or {}
        base = _load_frames(output_dir, files.get("base"))
        erased = _load_frames(output_dir, files.get("erased"))
        if base is None:
            continue
        lines.append((r["id"], resize_frames(base, height), resize_frames(erased, height) if erased is not None else None))
    if not lines:
        return None
    has_erased = any(e is not None for _, _, e in lines)
    cell_w = max(img[0].width for _, img, _ in lines)
    n_frames = min(len(b) for _, b, _ in lines)
    n_frames = min([n_frames] + [len(e) for _, _, e in lines if e is not None])
    cols = 2 if has_erased else 1
    W = LABEL_W + cols * (cell_w + 2)
    H = HEADER_H + len(lines) * (height + 2)
    frames = []
    for t in range(n_frames):
        canvas = Image.new("RGB", (W, H), (24, 24, 24))
        draw = ImageDraw.Draw(canvas)
        draw.text((LABEL_W + 2, 1), "base", fill=(230, 230, 230))
        if has_erased:
            draw.text((LABEL_W + cell_w + 4, 1), "erased", fill=(230, 230, 230))
        for i, (rid, b, e) in enumerate(lines):
            y = HEADER_H + i * (height + 2)
            draw.text((2, y + 2), rid, fill=(200, 200, 200))
            canvas.paste(b[t], (LABEL_W, y))
            if e is not None:
                canvas.paste(e[t], (LABEL_W + cell_w + 2, y))
        frames.append(canvas)
    return save_gif_images(frames, output_dir / name, fps)


def finish_report(plan, results: list[dict], summary: dict[str, Any]) -> dict[str, Any]:
    """Write results.csv, the grid and report.md; return the summary with their paths and the
    checks' verdict (summary.json is written by the caller once tracking ids are known)."""
    from eval.checks import degenerate_verdict, eraser_energy_verdict
    from eval.report_md import render
    from eval.writer import atomic_write_text, write_results_csv

    cfg = plan.cfg
    out = plan.output_dir
    summary.update(plan.inputs)  # truncation, prompt sets, provenance (eval.planning)
    summary["notes"] = list(plan.notes)
    summary.update(degenerate_verdict(cfg.checks, summary))
    summary.update(eraser_energy_verdict(summary))
    if summary.get("eraser_energy_warning"):  # a named warning: console, summary.json notes, report.md
        log.warning("%s", summary["eraser_energy_warning"])
        summary["notes"].append(summary["eraser_energy_warning"])
    write_results_csv(results, out / "results.csv")
    summary["results_csv"] = str(out / "results.csv")
    grid = None
    if cfg.output.grid_rows > 0:
        grid = make_grid(results, out, rows=cfg.output.grid_rows, height=cfg.output.grid_height,
                         fps=cfg.generation.fps)
    summary["grid"] = str(grid) if grid else None
    summary["output_dir"] = str(out)
    summary["report"] = str(out / "report.md")
    atomic_write_text(out / "report.md", render(summary))
    return summary
