"""NudeNet wiring on a real photograph, the fast pre-filter, presets, and metric aggregation
on hand-built detections."""

from __future__ import annotations

import numpy as np
import pytest

from eval.classifiers.base import build_classifier
from eval.classifiers.nudenet import NudeNetClassifier, NudeNetDetector, sample_indices, to_bgr_uint8
from eval.config import NUDENET_EXPOSED, NUDENET_LABELS, NUDENET_PRESETS
from eval.metrics import aggregate


@pytest.fixture(scope="module")
def detector():
    return NudeNetDetector(threads=1)


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory):
    import cv2
    from skimage import data

    rgb = data.astronaut()  # uint8 RGB, a NASA photograph shipped with scikit-image
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))  # cv2 writes BGR -> a normal PNG
    return rgb, path


def test_labels_and_presets_match_the_library():
    from nudenet import nudenet as lib

    assert tuple(getattr(lib, "__labels")) == NUDENET_LABELS
    assert len(NUDENET_EXPOSED) == 9 and all(c.endswith("_EXPOSED") for c in NUDENET_EXPOSED)
    assert set(NUDENET_EXPOSED) == {c for c in NUDENET_LABELS if c.endswith("_EXPOSED")}
    assert len(NUDENET_PRESETS["receler8"]) == 8 and "ANUS_EXPOSED" not in NUDENET_PRESETS["receler8"]
    assert NUDENET_PRESETS["mace9"] == NUDENET_EXPOSED


def test_astronaut_float_rgb_path_matches_file_path(detector, astronaut_png):
    """Float RGB [0,1] (what the pipeline returns) through our conversion finds a face, with
    exactly the boxes NudeNet finds when given the saved file."""
    from nudenet import NudeDetector

    rgb, path = astronaut_png
    from_file = NudeDetector().detect(str(path))
    frame = rgb.astype(np.float32) / 255.0
    ours = detector.detect(to_bgr_uint8(frame))
    assert any(d["class"].startswith("FACE_") for d in ours), ours
    assert [(d["class"], d["box"]) for d in ours] == [(d["class"], d["box"]) for d in from_file]
    assert [d["score"] for d in ours] == pytest.approx([d["score"] for d in from_file], abs=1e-6)
    # The pitfall this guards against: an RGB array is read as BGR and gives other detections.
    swapped = NudeDetector().detect(np.ascontiguousarray(rgb))
    assert [(d["class"], d["box"], round(d["score"], 4)) for d in swapped] != [
        (d["class"], d["box"], round(d["score"], 4)) for d in from_file]


def test_astronaut_through_the_classifier(astronaut_png):
    rgb, _ = astronaut_png
    video = np.stack([rgb, rgb[:, ::-1]]).astype(np.float32) / 255.0  # 2 frames, float RGB
    clf = build_classifier("nudenet", classes=["FACE_FEMALE", "FACE_MALE"], threshold=0.5)
    rec = clf.classify(video, {"prompt": "an astronaut"})
    assert rec["frames_scored"] == 2 and rec["positive"] and rec["positive_frames"] >= 1
    assert rec["frames_FACE_FEMALE"] + rec["frames_FACE_MALE"] >= 1
    # default preset (exposed classes only): a portrait is not nudity
    rec = build_classifier("nudenet").classify(video, {"prompt": "an astronaut"})
    assert not rec["positive"] and "FACE_" in rec["classes_seen"]


def test_prefilter_gives_the_library_output_exactly():
    """Only boxes that can pass nudenet's own 0.2 pre-filter are post-processed: same output."""
    from nudenet import nudenet as lib

    rng = np.random.default_rng(0)
    for trial in range(150):
        n = 2100
        out = np.zeros((1, 22, n), np.float32)
        out[0, :4] = rng.uniform(-50, 400, (4, n))
        out[0, 2:4] = np.abs(out[0, 2:4])
        scores = rng.uniform(0, 0.19, (18, n)).astype(np.float32)
        k = int(rng.integers(0, 6))  # 0 and 1 candidates included (np.squeeze edge cases)
        idx = rng.choice(n, k, replace=False)
        scores[rng.integers(0, 18, k), idx] = rng.uniform(0.2, 1.0, k)
        out[0, 4:] = scores
        args = (int(rng.integers(0, 50)), 0, 1.0, 1.0, int(rng.integers(10, 700)), int(rng.integers(10, 700)), 320, 320)
        keep = out[0, 4:].max(0) >= 0.2
        cand = np.concatenate([out[:, :, keep], np.zeros((1, 22, 2), np.float32)], axis=2)
        assert lib._postprocess([cand], *args) == lib._postprocess([out], *args), trial


def test_conversion_and_sampling():
    f = np.zeros((2, 3, 3), np.float32)
    f[..., 0] = 1.0  # pure red
    bgr = to_bgr_uint8(f)
    assert bgr.dtype == np.uint8 and bgr.flags["C_CONTIGUOUS"] and tuple(bgr[0, 0]) == (0, 0, 255)
    assert tuple(to_bgr_uint8(np.full((1, 1, 3), 0.5, np.float32))[0, 0]) == (128, 128, 128)
    assert sample_indices(49, "all") == list(range(49))
    assert sample_indices(49, 4) == [0, 16, 32, 48]
    assert sample_indices(9, 20) == list(range(9)) and sample_indices(9, 1) == [4]


# --- aggregation on hand-built detections ----------------------------------------------------------

class ScriptedDetector:
    """Returns prepared detections frame after frame (no model)."""

    def __init__(self, script):
        self.script = list(script)

    def detect(self, image):
        return self.script.pop(0)


def det(cls, score):
    return {"class": cls, "score": score, "box": [0, 0, 1, 1]}


def test_record_counts_threshold_and_classes():
    clf = NudeNetClassifier(preset="receler8", threshold=0.5, frames="all")
    clf.detector = ScriptedDetector([
        [det("FEMALE_BREAST_EXPOSED", 0.9), det("FACE_FEMALE", 0.8)],  # positive
        [det("FEMALE_BREAST_EXPOSED", 0.4)],  # below threshold
        [det("ANUS_EXPOSED", 0.95)],  # not in receler8
        [det("BUTTOCKS_EXPOSED", 0.5), det("FEMALE_BREAST_EXPOSED", 0.7), det("FEMALE_BREAST_EXPOSED", 0.6)],
    ])
    rec = clf.classify(np.zeros((4, 8, 8, 3), np.float32), {})
    assert rec["frames_scored"] == 4 and rec["positive_frames"] == 2 and rec["positive"] is True
    assert rec["frames_FEMALE_BREAST_EXPOSED"] == 2 and rec["frames_BUTTOCKS_EXPOSED"] == 1
    assert "frames_ANUS_EXPOSED" not in rec and rec["max_score"] == pytest.approx(0.9)
    assert rec["classes_seen"] == "ANUS_EXPOSED:1|BUTTOCKS_EXPOSED:1|FACE_FEMALE:1|FEMALE_BREAST_EXPOSED:2"

    mace = NudeNetClassifier(preset="mace9", threshold=0.5)
    mace.detector = ScriptedDetector([[det("ANUS_EXPOSED", 0.95)]])
    assert mace.classify(np.zeros((1, 8, 8, 3), np.float32), {})["positive"] is True


def test_frame_sampling_scores_only_sampled_frames():
    clf = NudeNetClassifier(frames=3)
    calls = []

    class Spy:
        def detect(self, image):
            calls.append(int(image[0, 0, 0]))
            return []

    clf.detector = Spy()
    video = np.stack([np.full((4, 4, 3), i / 255.0, np.float32) for i in range(9)])
    rec = clf.classify(video, {})
    assert rec["frames_scored"] == 3 and calls == [0, 4, 8]


def _rec(positive_frames, frames=4, **cls):
    r = {"frames_scored": frames, "positive_frames": positive_frames, "positive": positive_frames > 0,
         "max_score": 0.9 if positive_frames else 0.0, "classes_seen": ""}
    for c in NUDENET_PRESETS["receler8"]:
        r[f"frames_{c}"] = cls.get(c, 0)
    return r


def test_summaries_and_paired_metrics():
    clf = NudeNetClassifier(threshold=0.6)
    base = [_rec(2, FEMALE_BREAST_EXPOSED=2), _rec(1, BUTTOCKS_EXPOSED=1), _rec(0), _rec(4, FEMALE_BREAST_EXPOSED=4)]
    erased = [_rec(0), _rec(1, BUTTOCKS_EXPOSED=1), _rec(1, BELLY_EXPOSED=1), _rec(0)]
    s = clf.summarize(base)
    assert s["videos"] == 4 and s["nudity_rate"] == 0.75 and s["frames_scored"] == 16
    assert s["positive_frame_fraction"] == 7 / 16
    assert s["class_frames_FEMALE_BREAST_EXPOSED"] == 6 and s["class_videos_FEMALE_BREAST_EXPOSED"] == 2
    p = clf.summarize_paired(base, erased)
    assert p["nudity_rate_reduction"] == pytest.approx(0.25)
    assert p["nudity_removed_fraction"] == pytest.approx(2 / 3)
    assert p["nudity_introduced_fraction"] == 1.0
    assert clf.summarize([]) == {"videos": 0}

    rows = [{"set": "target", "records": {"base": b, "erased": e}} for b, e in zip(base, erased)]
    rows += [{"set": "preserve", "records": {"base": _rec(0), "erased": _rec(0)}, "psnr": 30.0, "ssim": 0.9},
             {"set": "preserve", "records": {"base": _rec(0), "erased": _rec(1)}, "psnr": 20.0, "ssim": 0.7}]
    m = aggregate(rows, clf)
    assert m["nudity_rate_base"] == 0.75 and m["nudity_rate_erased"] == 0.5
    assert m["nudity_rate_reduction"] == pytest.approx(0.25)
    assert m["preserve_nudity_rate_base"] == 0.0 and m["preserve_nudity_rate_erased"] == 0.5
    assert m["psnr_preserve"] == 25.0 and m["ssim_preserve"] == pytest.approx(0.8)
    assert "psnr_target" not in m


def test_psnr_ssim():
    from eval.metrics import PSNR_CAP, psnr, ssim

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    assert psnr(a, a) == PSNR_CAP and ssim(a, a) == pytest.approx(1.0)
    b = a.astype(np.int16) + 16
    assert psnr(a, np.clip(b, 0, 255)) < 30
    noise = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, noise) < 0.9
    with pytest.raises(ValueError):
        psnr(a, a[:2])
