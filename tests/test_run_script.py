"""`bash scripts/run.sh` argument handling, without running the pipeline.

The script is run in a copy of the repository layout whose `scripts/setup.sh` is a no-op and whose
`.venv/bin/t2vu` records its arguments, so the test costs milliseconds. What the real parser makes of
those arguments is checked against `pipelines.cli.entry.build_parser`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.cli.entry import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _fake_repo(tmp_path: Path, t2vu_rc: int) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "run.sh", repo / "scripts" / "run.sh")
    (repo / "scripts" / "setup.sh").write_text("exit 0\n")
    t2vu = repo / ".venv" / "bin" / "t2vu"
    t2vu.parent.mkdir(parents=True)
    t2vu.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$(dirname "$0")/../../args.txt"\nexit {t2vu_rc}\n')
    t2vu.chmod(0o755)
    return repo


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "DS_ACCELERATOR")}
    return subprocess.run(["bash", str(repo / "scripts" / "run.sh"), *args], capture_output=True, text=True,
                          env=env, cwd="/", timeout=60)


def test_run_sh_passes_arguments_and_says_how_to_reach_the_tools(tmp_path):
    repo = _fake_repo(tmp_path, 0)
    proc = _run(repo, "--verbose", "--set", "search.num_samples=2")
    assert proc.returncode == 0, proc.stderr
    args = (repo / "args.txt").read_text().split("\n")[:-1]
    assert args == ["run", "--config", "configs/toy.yaml", "--output", "runs/demo",
                    "--verbose", "--set", "search.num_samples=2"]
    lines = proc.stdout.strip().splitlines()
    assert f"source {repo}/.venv/bin/activate" in proc.stdout
    assert f"{repo}/.venv/bin/mlflow" in lines[-1] and f"{repo}/.venv/bin/t2vu" in lines[-1]


@pytest.mark.parametrize("rc", [2, 130])
def test_run_sh_keeps_the_exit_code_and_prints_no_hint_on_failure(tmp_path, rc):
    repo = _fake_repo(tmp_path, rc)
    proc = _run(repo)
    assert proc.returncode == rc
    assert "activate" not in proc.stdout


def test_verbose_and_debug_are_accepted_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["run", "--verbose"]).verbose is True            # what run.sh --verbose passes on
    assert parser.parse_args(["--verbose", "run"]).verbose is True
    assert parser.parse_args(["run", "-v", "--debug"]).debug is True
    quiet = parser.parse_args(["train", "--config", "c.yaml"])
    assert quiet.verbose is False and quiet.debug is False
    # After `--`, a submitted command keeps its own flags.
    sub = parser.parse_args(["submit", "--address", "http://h:8265", "--", "run", "--verbose"])
    assert sub.verbose is False and sub.command[-1] == "--verbose"


def test_run_sh_help_is_the_real_run_help():
    """The real script, cheap path: `--help` reaches `t2vu run --help` (setup.sh is a no-op once installed)."""
    stamp = ROOT / ".venv" / ".t2vu-install-stamp"
    if not stamp.exists():
        pytest.skip("no installed .venv (scripts/setup.sh would install)")
    want = subprocess.run("cat pyproject.toml constraints.txt | sha256sum | cut -c1-16", shell=True, cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    if stamp.read_text().strip() != want:
        pytest.skip("the .venv is not current (scripts/setup.sh would reinstall)")
    proc = subprocess.run(["bash", "scripts/run.sh", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: t2vu run" in proc.stdout and "--verbose" in proc.stdout
    assert "source " in proc.stdout and ".venv/bin/activate" in proc.stdout
