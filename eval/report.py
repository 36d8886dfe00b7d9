"""Reports of an eval run: `results.csv`, the base-vs-erased GIF grid, `report.md`, `summary.json`.

The grid shows up to `output.grid_rows` rows of every prompt set (the classifier's finer groups too:
target, synonym, two-object, preserve; flagged rows first, eval.report_md.pick_rows), one line per row:
its set and prompt, the base video and the erased video side by side, animated, built from the
per-row GIF previews (or the mp4s when previews are off), so it also works after a resume.
report.md and report.html show the same rows, with the same prompts, in a table per set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

GRID_NAME = "grid.gif"
LABEL_W = 200  # the prompt, wrapped: a line of the grid is labelled by what was asked for
LABEL_CHARS = 32  # characters per label line at PIL's default font (6 px a character)
LINE_H = 11
HEADER_H = 14


def _label_lines(set_name: str, prompt: str, height: int) -> list[str]:
    """`set` on the first line, then the prompt wrapped to the label column, cut (…) to the cell's height."""
    import textwrap

    n = max(1, height // LINE_H)
    words = textwrap.wrap(" ".join(str(prompt).split()), LABEL_CHARS) or [""]
    lines = [f"[{set_name}]"[:LABEL_CHARS], *words]
    if len(lines) > n:
        lines = lines[:n]
        lines[-1] = lines[-1][: LABEL_CHARS - 1] + "…"
    return lines


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
              name: str = GRID_NAME, flagged: set[str] = frozenset()) -> Path | None:
    """Animated GIF: one line per prompt (up to `rows` of each set, `flagged` row ids first), labelled
    with its set and prompt; columns base | erased."""
    from PIL import Image, ImageDraw

    from eval.generate import resize_frames, save_gif_images

    from eval.report_md import pick_rows

    output_dir = Path(output_dir)
    lines = []
    for set_name, picked in pick_rows(results, rows, flagged).items():
        for r in picked:
            files = r.get("files") or {}
            base = _load_frames(output_dir, files.get("base"))
            erased = _load_frames(output_dir, files.get("erased"))
            if base is None:
                continue
            lines.append((_label_lines(set_name, r.get("prompt", ""), height), resize_frames(base, height),
                          resize_frames(erased, height) if erased is not None else None, r["id"] in flagged))
    if not lines:
        return None
    has_erased = any(e is not None for _, _, e, _ in lines)
    cell_w = max(img[0].width for _, img, _, _ in lines)
    n_frames = min(len(b) for _, b, _, _ in lines)
    n_frames = min([n_frames] + [len(e) for _, _, e, _ in lines if e is not None])
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
        for i, (label, b, e, flag) in enumerate(lines):
            y = HEADER_H + i * (height + 2)
            if flag:  # a row report.md marks (eval.report_md.row_flags): a red bar down its label
                draw.rectangle((0, y, 2, y + height - 1), fill=(220, 40, 40))
            for j, text in enumerate(label):
                draw.text((5, y + 1 + j * LINE_H), text, fill=(150, 190, 255) if j == 0 else (210, 210, 210))
            canvas.paste(b[t], (LABEL_W, y))
            if e is not None:
                canvas.paste(e[t], (LABEL_W + cell_w + 2, y))
        frames.append(canvas)
    return save_gif_images(frames, output_dir / name, fps)


def finish_report(plan, results: list[dict], summary: dict[str, Any], classifier=None) -> dict[str, Any]:
    """Write results.csv, the grid, report.md and report.html; return the summary with their paths and the
    checks' verdict (summary.json is written by the caller once tracking ids are known). `classifier`
    (the run's) tells which rows show the concept where it was not asked for."""
    from eval.checks import degenerate_verdict, eraser_energy_verdict
    from eval.report_html import write_html
    from eval.report_md import render, row_flags, video_lines
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
    flagged = {r["id"] for r in results if row_flags(r, classifier)}
    if cfg.output.grid_rows > 0:
        grid = make_grid(results, out, rows=cfg.output.grid_rows, height=cfg.output.grid_height,
                         fps=cfg.generation.fps, flagged=flagged)
    summary["grid"] = str(grid) if grid else None
    summary["output_dir"] = str(out)
    summary["report"] = str(out / "report.md")
    # the video table lists rows even when no video was kept (grid_rows 0): their prompts and flags still tell
    per_set = cfg.output.grid_rows or REPORT_ROWS
    atomic_write_text(out / "report.md", render(summary, video_lines(results, classifier, per_set)))
    summary["report_html"] = str(write_html(out / "report.md"))
    return summary


REPORT_ROWS = 8  # rows per set in report.md's video table when the grid is off
