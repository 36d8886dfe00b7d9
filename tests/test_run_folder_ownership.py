"""One output folder, one writer, one command (issue 26, "silent wrong answers and data loss").

Two `t2vu` processes writing one folder used to mix their files silently (B's config.yaml next to A's eraser;
A's summary.json next to B's rows); `t2vu eval -o <a train run>` overwrote the training summary; `--overwrite`
of import-eraser / make-tiny-model deleted the whole folder, the input file and unrelated files included.
Here a real `t2vu` process holds a folder while a second command is refused; a killed or interrupted
holder blocks nobody; a command's folder refuses another command; --overwrite removes only what the
command itself wrote (pipelines/runtime/run_folder.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.cli import entry as cli
from pipelines.runtime.run_folder import LOCK, MARKER, claim, read_marker
from unlearn.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")
EVAL = str(ROOT / "configs" / "eval" / "tiny.yaml")


def _main(argv: list[str], capsys) -> tuple[int, list[str]]:
    rc = cli.main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return rc, err


def _wait_for_lock(folder: Path, pid: int, proc: subprocess.Popen, timeout: float = 120.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        try:
            rec = json.loads((folder / LOCK).read_text() or "{}")
        except (OSError, ValueError):
            rec = {}
        if rec.get("pid") == pid:
            return rec
        time.sleep(0.2)
    raise AssertionError(f"{folder / LOCK} never named pid {pid}")


def _holder(folder: Path, command: str = "train") -> subprocess.Popen:
    """A process that claims `folder` the way the CLI does, says so, and sleeps until signalled."""
    code = ("import sys, time\nfrom pipelines.runtime.run_folder import claim\n"
            f"with claim({str(folder)!r}, {command!r}):\n    print('held', flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_train_into_a_folder_a_running_train_holds_is_refused_and_a_killed_one_blocks_nobody(tmp_path, capsys):
    out = tmp_path / "run"
    a = subprocess.Popen([sys.executable, "-m", "pipelines.cli.entry", "train", "-c", TINY, "-o", str(out),
                          "--set", "train.steps=100000", "--set", "eraser.rank=4"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rec = _wait_for_lock(out, a.pid, a)
        assert "train" in rec["command"] and rec["host"] and rec["since"]
        # B: another config into A's folder (the case: B's config.yaml ended up next to A's eraser)
        rc, err = _main(["train", "-c", TINY, "-o", str(out), "--set", "eraser.rank=8"], capsys)
        assert rc == 2 and len(err) == 1 and err[0].startswith("error:"), err
        assert "in use by pid" in err[0] and str(a.pid) in err[0] and "train" in err[0] and str(out) in err[0]
        rc, err = _main(["eval", "-c", EVAL, "-o", str(out)], capsys)  # nor may another command join in
        assert rc == 2 and "in use by pid" in err[0]
        if (out / "config.yaml").exists():
            assert "rank: 8" not in (out / "config.yaml").read_text()
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    assert a.returncode == -signal.SIGKILL
    with claim(out, "train"):  # stale: the kernel dropped the dead owner's lock
        assert read_marker(out)["command"] == "train"
    assert not (out / LOCK).exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_holder_stopped_by_a_signal_leaves_the_folder_free(tmp_path, sig):
    out = tmp_path / "ev"
    proc = _holder(out, "eval")
    with pytest.raises(ConfigError, match=f"in use by pid {proc.pid} "):
        with claim(out, "eval"):
            pass
    proc.send_signal(sig)
    proc.wait(timeout=60)
    with claim(out, "eval"):
        (out / "rows").mkdir()  # this time something is written: the folder stays, marked
    assert read_marker(out)["command"] == "eval" and not (out / LOCK).exists()


def test_an_exception_releases_the_folder_and_a_failed_start_leaves_nothing(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with claim(out, "train"):
            assert (out / MARKER).is_file() and (out / LOCK).is_file()
            raise RuntimeError("bad input")
    assert not (tmp_path / "a").exists()  # nothing written: the folder and the parents it made are gone


def test_two_evals_into_one_folder(tmp_path, capsys):
    """The issue's case: both exited 0, summary.json of A next to rows and videos of B."""
    out = tmp_path / "ev"
    with claim(out, "eval", argv=["t2vu", "eval", "-o", str(out)]):
        rc, err = _main(["eval", "-c", EVAL, "-o", str(out), "--limit", "1"], capsys)
        assert rc == 2 and len(err) == 1 and f"pid {os.getpid()}" in err[0] and "`t2vu eval -o" in err[0], err
        assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, LOCK])  # B wrote nothing


@pytest.mark.parametrize("marked", [True, False])
def test_eval_into_a_train_run_is_refused_and_the_run_is_untouched(tmp_path, capsys, marked):
    run = tmp_path / "train-run"
    run.mkdir()
    files = {"config.yaml": "eraser:\n  rank: 8\n", "summary.json": '{"steps": 60}\n'}
    if marked:  # a folder made now; without the marker: made before markers existed (recognised by its config)
        files[MARKER] = '{"command": "train"}\n'
    for name, text in files.items():
        (run / name).write_text(text)
    rc, err = _main(["eval", "-c", EVAL, "-o", str(run), "--limit", "1"], capsys)
    assert rc == 2 and len(err) == 1 and "made by `t2vu train`" in err[0] and "--output" in err[0], err
    assert sorted(p.name for p in run.iterdir()) == sorted(files)
    assert all((run / n).read_text() == t for n, t in files.items())


def test_an_older_train_folder_is_adopted_by_train(tmp_path):
    run = tmp_path / "old"
    (run / "eraser").mkdir(parents=True)
    (run / "config.yaml").write_text("eraser:\n  rank: 8\n")
    with claim(run, "train"):
        pass
    assert read_marker(run)["command"] == "train" and (run / "config.yaml").is_file()


def test_a_command_refuses_a_folder_inside_another_run(tmp_path, capsys):
    run = tmp_path / "search-run"
    with claim(run, "tune"):
        (run / "search_config.yaml").write_text("x: 1\n")
    rc, err = _main(["eval", "-c", EVAL, "-o", str(run / "eval"), "--limit", "1"], capsys)
    assert rc == 2 and "lies inside" in err[0] and "`t2vu tune`" in err[0], err
    assert not (run / "eval").exists()


def test_report_waits_for_the_run_it_adds_to(tmp_path, capsys):
    """`t2vu report` writes report.md and plots into a search folder: not while the search (or the `t2vu run`
    whose search/ it is) still writes there."""
    run = tmp_path / "pipeline"
    with claim(run, "run", argv=["t2vu", "run", "-o", str(run)]):
        (run / "search").mkdir()
        rc, err = _main(["report", str(run / "search"), "--no-mlflow"], capsys)
        assert rc == 2 and len(err) == 1 and "`t2vu run -o" in err[0] and str(run) in err[0], err
    rc, err = _main(["report", str(run / "search"), "--no-mlflow"], capsys)  # free now: its own check speaks
    assert rc == 2 and "not a search run folder" in err[0] and "in use" not in err[0], err
    assert not (run / "search" / LOCK).exists()


# ----------------------------------------------------------------------------- --overwrite
def _their_file(folder: Path) -> Path:
    from tests.test_import_eraser import save_their_file, their_adapters

    return save_their_file(folder, their_adapters(2, 32, 2), 2)  # the tiny model: 2 blocks, hidden 32


def test_import_eraser_overwrite_replaces_only_its_own_files(tmp_path, capsys):
    src, out = _their_file(tmp_path / "paper"), tmp_path / "ours"
    assert _main(["import-eraser", "--format", "t2vunlearning", str(src), str(out)], capsys)[0] == 0
    own = sorted(read_marker(out)["files"])
    assert own == ["eraser.safetensors", "eraser_config.json"]
    assert _main(["import-eraser", "--format", "t2vunlearning", str(src), str(out), "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*own, MARKER])

    (out / "notes.txt").write_text("mine")  # the issue: --overwrite deleted unrelated files in OUT
    rc, err = _main(["import-eraser", "--format", "t2vunlearning", str(src), str(out), "--overwrite"], capsys)
    assert rc == 2 and len(err) == 1 and "did not write (notes.txt)" in err[0], err
    assert (out / "notes.txt").read_text() == "mine" and (out / "eraser.safetensors").is_file()


def test_import_eraser_never_deletes_its_input(tmp_path, capsys):
    """The issue: `import-eraser FILE DIR --overwrite` with FILE inside DIR deleted FILE."""
    src = _their_file(tmp_path / "paper")
    before = {p.name: p.read_bytes() for p in src.parent.iterdir()}
    rc, err = _main(["import-eraser", "--format", "t2vunlearning", str(src), str(src.parent), "--overwrite"], capsys)
    assert rc == 2 and len(err) == 1 and "lies inside OUT" in err[0], err
    assert {p.name: p.read_bytes() for p in src.parent.iterdir()} == before


def test_make_tiny_model_overwrite_keeps_files_it_did_not_write(tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):  # before: both replaced the folder (the second deleted notes.txt)
        rc, err = _main(["make-tiny-model", str(d), *extra], capsys)
        assert rc == 2 and len(err) == 1, err
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]

    d2 = tmp_path / "m2"
    assert _main(["make-tiny-model", str(d2)], capsys)[0] == 0
    files = set(read_marker(d2)["files"])
    assert "model_index.json" in files and any(f.startswith("transformer/") for f in files)
    assert _main(["make-tiny-model", str(d2), "--overwrite", "--seed", "1"], capsys)[0] == 0
    assert set(read_marker(d2)["files"]) == files
    assert not [p for p in d2.iterdir() if p.name.startswith(".")]  # no staging left behind
