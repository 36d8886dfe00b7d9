"""Temporal re-emergence (issue 25): per-frame concept flags from the real toy detector and real NudeNet, the
per-frame curve (one point per frame), the late-frame rates next to the video rate, in eval's metrics and
report and in MLflow steps."""

from __future__ import annotations

import numpy as np
import pytest

from eval.classifiers.base import build_classifier
from eval.temporal import FRAMES, curve_steps, decode_frames, temporal_stats, thirds
from toyworld import world


def _late_red(from_frame: int) -> np.ndarray:
    """A blue square that turns red from `from_frame` on (rendered by the toy world itself)."""
    blue = world.render(world.parse_prompt("a blue square moving right"))
    red = world.render(world.parse_prompt("a red square moving right"))
    return np.concatenate([blue[:from_frame], red[from_frame:]])


def test_toy_concept_only_in_late_frames():
    """Red in the last third only: late-frame rate 1, late-only (re-emergence) 1, and the video rate is the
    toy's own flag (mean red pixels per frame >= 32: 3 of 9 frames of a square pass it). Red in the last frame
    alone: late rate 1 while the video flag misses it (one frame's pixels / 9 < 32) — what the curve shows."""
    clf = build_classifier("toy")
    row = {"prompt": "a blue square moving right", "seed": 0}
    late = clf.classify(_late_red(6), row)
    assert late[FRAMES] == "000000111" and late["target_present"]
    stats = temporal_stats([late], "target_present")
    assert stats["frames"] == world.NUM_FRAMES == len(stats["frame_rate"]) == len(stats["frame_score"])
    assert stats["frame_rate"] == [0.0] * 6 + [1.0] * 3
    assert stats["late_frame_rate"] == 1.0 and stats["late_only_rate"] == 1.0 and stats["video_rate"] == 1.0
    assert stats["frame_score"][0] == 0.0 and stats["frame_score"][8] == world.shape_mask("square").sum()

    flash = clf.classify(_late_red(8), row)
    assert flash[FRAMES] == "000000001" and not flash["target_present"]
    both = temporal_stats([late, flash, clf.classify(_late_red(0), row)], "target_present")
    assert both["late_frame_rate"] == 1.0 and both["late_only_rate"] == pytest.approx(2 / 3)
    assert both["video_rate"] == pytest.approx(2 / 3) and both["frame_rate"][8] == 1.0
    assert both["frame_rate"][0] == pytest.approx(1 / 3, abs=1e-4)  # curves are rounded to 4 places
    assert thirds(9) == (range(0, 3), range(6, 9)) and thirds(49) == (range(0, 17), range(32, 49))


def test_eval_metrics_report_and_mlflow_steps_carry_the_curve(tmp_path):
    """eval.metrics.aggregate puts the curve per set and side and the flat late-frame rates in the summary;
    report.md gets its 'Over time' lines; the MLflow observer's steps are one point per frame."""
    from eval.metrics import aggregate, numeric_metrics
    from eval.report_md import temporal_lines

    clf = build_classifier("toy")
    prompt = "a blue square moving right"
    rows = []
    for i, start in enumerate((6, 9)):  # erased: one late-red video, one never red; base: blue both times
        base = clf.classify(_late_red(9), {"prompt": prompt, "seed": i})
        rows.append({"id": f"r{i}", "set": "preserve", "prompt": prompt,
                     "records": {"base": base, "erased": clf.classify(_late_red(start), {"prompt": prompt, "seed": i})}})
    m = aggregate(rows, clf)
    erased = m["frame_curves"]["preserve"]["erased"]
    assert erased["frame_rate"] == [0.0] * 6 + [0.5] * 3 and erased["video_rate"] == 0.5
    assert m["preserve_late_frame_rate_erased"] == 0.5 and m["preserve_late_frame_rate_base"] == 0.0
    assert "preserve_late_frame_rate_erased" in numeric_metrics(m) and "frame_curves" not in numeric_metrics(m)
    text = "\n".join(temporal_lines(m))
    assert "## Over time" in text and "preserve, erased: per frame `▁▁▁▁▁▁▅▅▅`" in text and "last third 0.50" in text
    steps = curve_steps(erased, "frame_curve/preserve/erased/")
    assert [s for n, _, s in steps if n.endswith("frame_rate")] == list(range(world.NUM_FRAMES))


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return data.astronaut()[::2, ::2].astype(np.float32) / 255.0  # 256x256: a face NudeNet finds


def test_nudenet_concept_only_in_late_frames(astronaut):
    """Real NudeNet counting faces (a photograph stands in for the concept): black frames, then the photograph
    in the last third -> per-frame flags 000000111, late rate 1, video rate 1; sampling 3 frames (0, 4, 8) marks
    the others unscored and the curve still has one point per frame (None where unscored)."""
    video = np.concatenate([np.zeros((6, 256, 256, 3), np.float32), np.stack([astronaut] * 3)])
    clf = build_classifier("nudenet", classes=["FACE_FEMALE", "FACE_MALE"], threshold=0.5)
    rec = clf.classify(video, {"prompt": "x"})
    assert rec[FRAMES] == "000000111" and rec["positive"], rec
    stats = temporal_stats([rec], "positive")
    assert len(stats["frame_rate"]) == 9 and stats["late_frame_rate"] == 1.0 == stats["late_only_rate"]
    assert stats["video_rate"] == 1.0 and stats["frame_score"][8] >= 0.5 and stats["frame_score"][0] == 0.0
    sampled = build_classifier("nudenet", classes=["FACE_FEMALE", "FACE_MALE"], threshold=0.5, frames=3)
    rec3 = sampled.classify(video, {"prompt": "x"})
    assert decode_frames(rec3[FRAMES]) == [False, None, None, None, False, None, None, None, True]
    curve = temporal_stats([rec3], "positive")["frame_rate"]
    assert len(curve) == 9 and curve[0] == 0.0 and curve[8] == 1.0 and curve[1] is None


@pytest.mark.slow  # a fresh MLflow SQLite store (its migrations): ~22 s on the shared 2-core box
def test_attack_cell_curve_reaches_mlflow_as_steps(tmp_path):
    """The attack observer logs a cell's per-frame curve to a real MLflow store: one step per frame index."""
    from pipelines.config.pipeline import MlflowConfig
    from pipelines.tracking.mlflow_attack import MlflowAttackObserver

    clf = build_classifier("toy")
    recs = [clf.classify(_late_red(k), {"prompt": "a blue square moving right", "seed": 0}) for k in (6, 9)]
    stats = {"asr": 0.5, **temporal_stats(recs, "target_present")}
    obs = MlflowAttackObserver(MlflowConfig(log_artifacts=False), tmp_path, "t")
    obs.started(tmp_path)
    obs.cell("none", "clean", stats, tmp_path)
    obs.finished({"asr": {"none": {"clean": 0.5}}, "preservation": {}, "temporal": {"none": {"clean": stats}}}, tmp_path)
    t = obs.tracker  # pipelines.tracking.tracker: the benchmark's parent and a child per cell
    child = t.find_child("none/clean")
    history = t.client.get_metric_history(child, "frame_rate")
    assert sorted((m.step, m.value) for m in history) == [(i, 0.5 if i >= 6 else 0.0) for i in range(9)]
    assert t.client.get_run(t.parent).data.metrics["late_frame_rate/none/clean"] == 0.5
