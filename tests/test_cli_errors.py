"""Expected failures end in one line naming the file or field (exit 2), never a raw traceback; Ctrl-C is 130."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.cli import entry as cli
from unlearn.eraser import EraserSet, EraserMeta, save_eraser

ROOT = Path(__file__).resolve().parent.parent


def run_cli(argv, capsys) -> tuple[int, str]:
    rc = cli.main(argv)
    err = capsys.readouterr().err
    return rc, err


def test_missing_model_directory_in_train(tmp_path, capsys):
    rc, err = run_cli(["train", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(tmp_path / "out"),
                       "--set", f"model.path={tmp_path / 'nope'}"], capsys)
    assert rc == 2 and "does not exist" in err and "nope" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_output_path_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    rc, err = run_cli(["train", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(tmp_path / "taken")], capsys)
    assert rc == 2 and "taken" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("damage", ["json", "weights"])
def test_damaged_eraser_files_name_the_file(tmp_path, capsys, damage):
    es = EraserSet(EraserMeta(hidden_size=32, rank=2, num_blocks=2, block_indices=[0, 1]))
    d = save_eraser(es, tmp_path / "er")
    target = d / ("eraser_config.json" if damage == "json" else "eraser.safetensors")
    target.write_bytes(target.read_bytes()[:20])
    rc, err = run_cli(["eval", "-c", str(ROOT / "configs" / "eval" / "tiny.yaml"), "-o", str(tmp_path / "ev"),
                       "--set", f"eraser={d}"], capsys)
    assert rc == 2 and target.name in err and "Traceback" not in err, err
    assert not (tmp_path / "ev" / "rows").exists()


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys):
    from pipelines.cli.commands import report

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "run", interrupted)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser, "report", interrupted))
    rc, err = run_cli(["report", "x"], capsys)
    assert rc == 130 and "rerun the same command to resume" in err


def _with_func(parser, name, func):
    for action in parser._subparsers._group_actions:
        action.choices[name].set_defaults(func=func)
    return parser


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError):
        cli.main(["--debug", "train", "-c", str(ROOT / "configs" / "tiny.yaml"), "-o", str(tmp_path / "o"),
                  "--set", f"model.path={tmp_path / 'nope'}"])


def test_bad_env_and_unreachable_submit_address(capsys):
    rc, err = run_cli(["submit", "--address", "http://127.0.0.1:9", "--env", "NOEQUALS", "--", "report", "x"], capsys)
    assert rc == 2 and "KEY=VALUE" in err
    rc, err = run_cli(["submit", "--address", "http://127.0.0.1:9", "--", "report", "x"], capsys)
    assert rc == 2 and "127.0.0.1:9" in err and "Traceback" not in err, err
    json.dumps(err)
