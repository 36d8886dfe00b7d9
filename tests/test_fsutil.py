"""The project's one write mechanism: a file appears whole or not at all, and readers of a folder
another process is writing never see a write in progress."""

from __future__ import annotations

import os
import stat

import pytest

from unlearn.fsutil import atomic_path, atomic_write_text, file_sha256, finished_files, temp_files


def test_a_write_in_progress_is_not_a_finished_file(tmp_path):
    atomic_write_text(tmp_path / "t00000.json", "{}")
    with atomic_path(tmp_path / "t00001.json") as tmp:
        tmp.write_text("{")
        # the temp file keeps the suffix (format detection by extension) so a bare glob sees it
        assert tmp.suffix == ".json" and tmp in set(tmp_path.glob("*.json"))
        assert [p.name for p in finished_files(tmp_path, "*.json")] == ["t00000.json"]
        assert temp_files(tmp_path) == [tmp]  # what a rerun after a kill removes
    assert temp_files(tmp_path) == []
    assert [p.name for p in finished_files(tmp_path, "*.json")] == ["t00000.json", "t00001.json"]


def test_only_atomic_temporaries_count_as_temp_files(tmp_path):
    """A rerun of `t2vu eval` deletes the temp files of its --output: a user's own dot-files there (it deleted
    `.env` and `.gitignore` of a project folder named as --output) are not temporaries."""
    for name in (".env", ".gitignore", ".tmp", ".notes.tmp.txt.bak"):
        (tmp_path / name).write_text("mine")
    with atomic_path(tmp_path / "summary.json") as tmp, atomic_path(tmp_path / "video") as tmp2:
        tmp.write_text("{"), tmp2.write_text("x")
        assert temp_files(tmp_path) == sorted([tmp, tmp2])


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_written_files_get_the_mode_a_plain_open_gives(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644


def test_file_sha256_is_the_sha256_of_the_bytes_across_blocks(tmp_path):
    import hashlib

    data = os.urandom((1 << 20) + 17)  # more than one 1 MiB read block
    p = tmp_path / "w.bin"
    p.write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
