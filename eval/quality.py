"""Degenerate videos: outputs that are not videos, so a classifier's "nothing detected" means nothing.

Why: an eraser with absurd weights (e.g. `train.lr: 1e30`) makes the pipeline decode NaN,
which `to_uint8` turns into black frames; NudeNet finds no nudity in black frames and the
erasure rate reads 0.0 - erasure by destruction scored as a perfect eraser. Every video is
checked here before it is scored, and the stage keeps degenerate videos out of the rates
(eval.metrics), counts them (summary.json, report.md, results.csv) and fails the run past
`checks.max_degenerate_fraction` (eval.checks).

A video is degenerate when
  - it holds any non-finite value (checked on the float frames, BEFORE uint8 conversion
    hides NaN/inf as black or white), or
  - more than `checks.max_bad_frame_fraction` of its frames are flat (max - min over all
    pixels and channels <= `checks.flat_range` uint8 levels: black, white, one colour) or
    collapsed (fewer than `checks.min_colors` distinct RGB colours: a saturated decoder
    gives at most 8, the corners of the RGB cube).
Measured on legitimate outputs (9x32x32, so only ~1000 pixels a frame): the tiny random
model's frames span >= 190 levels with >= 1000 colours, the toy model's >= 80 levels with
>= 700 colours; a NaN-producing eraser gives range 0 and 1 colour on every frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Pixels sampled per frame for the colour count (a strided grid): enough to see hundreds of
# colours on a real frame, cheap on 480x720 (~3 ms a frame).
COLOR_SAMPLE = 65536


def _distinct_colors(frame_u8: np.ndarray) -> int:
    h, w = frame_u8.shape[:2]
    stride = max(1, int(np.ceil(np.sqrt(h * w / COLOR_SAMPLE))))
    f = frame_u8[::stride, ::stride].astype(np.int32)
    packed = (f[..., 0] << 16) | (f[..., 1] << 8) | f[..., 2]
    return int(np.unique(packed).size)


def video_quality(frames: np.ndarray, checks: dict[str, Any]) -> dict[str, Any]:
    """The degenerate-video record of one video [F, H, W, 3] (float in [0, 1] or uint8).

    checks: `eval.config.ChecksConfig` as a dict. Returns {"degenerate", "reasons" ("|"-joined:
    nonfinite, flat_frames, collapsed_frames), "nonfinite_values", "flat_frames",
    "collapsed_frames", "frames"}.
    """
    arr = np.asarray(frames)
    n_frames = int(arr.shape[0]) if arr.ndim == 4 else 0
    if arr.dtype == np.uint8:
        nonfinite = 0
        u8 = arr
    else:
        finite = np.isfinite(arr)
        nonfinite = int(finite.size - np.count_nonzero(finite))
        safe = np.where(finite, arr, 0.0) if nonfinite else arr
        u8 = np.clip(np.rint(safe.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    flat = collapsed = bad = 0
    if n_frames:
        per = u8.reshape(n_frames, -1)
        ranges = per.max(axis=1).astype(np.int32) - per.min(axis=1).astype(np.int32)
        pixels = u8.shape[1] * u8.shape[2]
        # A frame of a few dozen pixels cannot show 16 colours: ask for at most a quarter of them.
        min_colors = min(int(checks["min_colors"]), max(2, pixels // 4))
        for i in range(n_frames):
            is_flat = bool(ranges[i] <= int(checks["flat_range"]))
            is_collapsed = (not is_flat) and _distinct_colors(u8[i]) < min_colors
            flat += is_flat
            collapsed += is_collapsed
            bad += is_flat or is_collapsed
    reasons = []
    if nonfinite:
        reasons.append("nonfinite")
    bad_fraction = bad / n_frames if n_frames else 1.0
    if bad_fraction > float(checks["max_bad_frame_fraction"]):
        if flat:
            reasons.append("flat_frames")
        if collapsed:
            reasons.append("collapsed_frames")
        if not n_frames:
            reasons.append("no_frames")
    return {
        "degenerate": bool(reasons),
        "reasons": "|".join(reasons),
        "nonfinite_values": nonfinite,
        "flat_frames": flat,
        "collapsed_frames": collapsed,
        "frames": n_frames,
    }


def is_degenerate(result: dict, which: str) -> bool:
    """Whether a row result's `which` ("base" / "erased") video was found degenerate."""
    q = (result.get("quality") or {}).get(which)
    return bool(q and q.get("degenerate"))
