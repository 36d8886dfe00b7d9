"""A config names plugins, it cannot import code: `classifier.name: os:system` runs nothing and ends in one
line naming the field, the name and the registered choices; plugins come from the built-ins and from
installed packages' entry points (`t2vu.classifiers`); the other name-to-code seams refuse import paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from eval.classifiers.base import CLASSIFIERS, VideoClassifier, build_classifier, classifier_names
from unlearn.config import ConfigError
from unlearn.plugins import UnknownPluginError, load_reference

ROOT = Path(__file__).resolve().parent.parent


class Echo(VideoClassifier):
    name = "echo"

    def __init__(self, level: float = 1.0):
        self.level = level

    def classify(self, frames, row):
        return {"level": self.level}

    def summarize(self, records):
        return {}


def _marker_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    """An importable module that leaves a file behind if anything ever imports it."""
    marker = tmp_path / "imported.txt"
    mod = tmp_path / "mods" / "t2vu_evil_plugin.py"
    mod.parent.mkdir()
    mod.write_text(f"open({str(marker)!r}, 'w').write('imported')\nFactory = lambda **kw: None\n")
    monkeypatch.syspath_prepend(str(mod.parent))
    return "t2vu_evil_plugin:Factory", marker


def test_module_attr_names_are_never_imported(tmp_path, monkeypatch):
    name, marker = _marker_module(tmp_path, monkeypatch)
    for bad in (name, "os:system", "subprocess:getoutput", "builtins:eval"):
        with pytest.raises(UnknownPluginError) as err:
            build_classifier(bad, command=f"touch {tmp_path / 'ran'}")
        msg = str(err.value)
        assert msg.startswith("classifier.name: ") and repr(bad) in msg and "registered: nudenet, toy" in msg
        assert "t2vu.classifiers" in msg and "\n" not in msg
    assert not marker.exists() and not (tmp_path / "ran").exists()
    assert "t2vu_evil_plugin" not in sys.modules


def test_cli_os_system_runs_nothing_one_line(tmp_path, capsys):
    from pipelines.cli.entry import main

    ran = tmp_path / "ran"
    rc = main(["eval", "-c", str(ROOT / "configs" / "eval" / "tiny.yaml"), "-o", str(tmp_path / "out"),
               "--set", "classifier.name=os:system", "--set", f"classifier.options={{command: 'touch {ran}'}}"])
    err = capsys.readouterr().err
    assert rc == 2 and not ran.exists() and not (tmp_path / "out").exists()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err
    assert "classifier.name" in lines[0] and "'os:system'" in lines[0] and "registered: nudenet, toy" in lines[0]


def test_an_installed_entry_point_is_a_plugin(tmp_path, monkeypatch):
    from eval.config import ClassifierConfig
    from tests.plugin_dist import entry_point_site

    assert "echo" not in classifier_names()
    with pytest.raises(ValueError, match="'echo' is not a registered classifier"):
        ClassifierConfig(name="echo")
    monkeypatch.syspath_prepend(str(entry_point_site(tmp_path, {"echo": f"{__name__}:Echo"})))
    assert "echo" in classifier_names() and ClassifierConfig(name="echo").name == "echo"
    clf = build_classifier("echo", level=0.25)
    assert isinstance(clf, Echo) and clf.level == 0.25
    # built-ins still load, lazily, from the project's own table
    assert type(build_classifier("toy", target="red")).__name__ == "ToyClassifier"


def test_in_process_registration_is_code_not_config(monkeypatch):
    from eval.classifiers import register_classifier

    monkeypatch.setattr(CLASSIFIERS, "registered", dict(CLASSIFIERS.registered))
    register_classifier("echo_local")(Echo)
    assert isinstance(build_classifier("echo_local"), Echo)
    with pytest.raises(ValueError, match="plain word"):
        register_classifier("pkg.mod:Echo")(Echo)


def test_builtin_references_stay_inside_the_project():
    assert load_reference("unlearn.models.tiny:make_tiny_model").__name__ == "make_tiny_model"
    for ref in ("os:system", "subprocess:run", "unlearn.models.tiny", ""):
        with pytest.raises(ValueError, match="inside"):
            load_reference(ref)
    from unlearn.plugins import PluginKind

    with pytest.raises(ValueError, match="outside the project"):
        PluginKind(field="x.name", group="t2vu.x", builtins={"bad": "os:system"})


def test_step_hook_takes_a_function_not_an_import_path():
    from pipelines.train.worker import load_step_hook
    from unlearn.loop import StepHook

    seen = []
    hook = load_step_hook(StepHook(lambda step, rank, tag: seen.append((step, rank, tag)), {"tag": 1}))
    hook(3, 0)
    assert seen == [(3, 0, 1)] and load_step_hook(None) is None
    with pytest.raises(TypeError, match="not imported"):
        StepHook("os:system")
    with pytest.raises(TypeError, match="not imported"):  # the untyped dict of before is refused too
        load_step_hook({"function": print, "kwargs": {}})


def test_model_index_may_name_only_diffusers_and_transformers(tmp_path):
    import json
    import shutil

    from unlearn.models.families import family_of_model_dir
    from unlearn.models.registry import resolve_model_path

    model = tmp_path / "m"
    shutil.copytree(resolve_model_path("builtin:tiny"), model)
    assert family_of_model_dir(model) == "cogvideox"
    index = json.loads((model / "model_index.json").read_text())
    index["scheduler"] = ["os", "system"]
    (model / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match="component 'scheduler' names library 'os'"):
        family_of_model_dir(model)
