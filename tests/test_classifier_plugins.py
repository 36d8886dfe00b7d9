"""Classifier plugins come from installed entry points, never from a `module:attr` a config names (issue 26).

Before: `classifier.name: os:system` with `options: {command: ...}` imported `os` and ran the command.
"""

from __future__ import annotations

import importlib.metadata
import sys

import pytest

from eval.classifiers.base import ENTRY_POINT_GROUP, build_classifier, known_classifiers


def test_a_module_path_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ValueError, match="'os:system' is not a registered classifier.*path is never imported"):
        build_classifier("os:system", command=f"touch {marker}")
    assert not marker.exists()
    with pytest.raises(ValueError, match="'bogus' is not a registered classifier.*entry-point group 't2vu.classifiers'"):
        build_classifier("bogus")


def test_an_installed_entry_point_is_a_classifier(tmp_path, monkeypatch):
    """A package that declares `[project.entry-points."t2vu.classifiers"]` is found by its name."""
    pkg = tmp_path / "site"
    (pkg / "myplug").mkdir(parents=True)
    (pkg / "myplug" / "__init__.py").write_text(
        "from eval.classifiers.toy import ToyClassifier\n"
        "def make(**options):\n    return ToyClassifier(**options)\n")
    dist = pkg / "myplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nmy-detector = myplug:make\n")
    monkeypatch.syspath_prepend(str(pkg))
    importlib.invalidate_caches()
    assert "my-detector" in known_classifiers()
    clf = build_classifier("my-detector")
    assert type(clf).__name__ == "ToyClassifier"
    monkeypatch.delitem(sys.modules, "myplug", raising=False)
