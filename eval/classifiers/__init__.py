"""Pluggable video classifiers (NudeNet for nudity, the toy-world detector, ...)."""

from eval.classifiers.base import VideoClassifier, build_classifier, register_classifier

__all__ = ["VideoClassifier", "build_classifier", "register_classifier"]
