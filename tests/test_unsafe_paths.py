"""Names that become paths cannot climb out of the run folder; nothing outside it is ever deleted."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config.pipeline import load_pipeline_config
from pipelines.runtime.run_folder import remove_owned
from unlearn.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("key,config", [("distributed.name", "tiny.yaml"), ("search.name", "search/tiny.yaml")])
@pytest.mark.parametrize("bad", ["../../../victim", "a/b", "..", "/abs"])
def test_run_names_that_are_paths_are_refused(key, config, bad):
    with pytest.raises(ConfigError, match=rf"{key}.*plain name"):
        load_pipeline_config(ROOT / "configs" / config, [f"{key}={bad}"])


def test_remove_owned_never_deletes_outside_its_root(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "sentinel").write_text("keep me")
    run = tmp_path / "out" / "ray"
    run.mkdir(parents=True)
    for escape in (run / ".." / ".." / "victim", victim, run):
        with pytest.raises(ConfigError, match="refusing to delete"):
            remove_owned(escape, run)
    (run / "link").symlink_to(victim)
    with pytest.raises(ConfigError, match="refusing to delete"):
        remove_owned(run / "link", run)
    assert (victim / "sentinel").read_text() == "keep me"
    (run / "train").mkdir()
    (run / "train" / "x").write_text("old")
    remove_owned(run / "train", run)
    assert not (run / "train").exists() and run.is_dir()
