"""`t2vu --help` and each command's help, as a new user reads them: the model families named, one line per
command, every command's page opening with what it does, and `t2vu attack --help` listing every method and
attack the attack config accepts (read from its schema and the eval method registry, not typed twice)."""

from __future__ import annotations

import re

import pytest

from pipelines.cli.entry import build_parser, main


def help_text(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps at the terminal width


def commands() -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {a.dest: a.help for a in sub._choices_actions}


def test_top_level_help_names_both_families_and_describes_every_command(capsys):
    text = help_text(capsys)
    assert "CogVideoX and Wan" in text
    listed = commands()
    assert len(listed) >= 11
    for name, line in listed.items():
        assert line and len(line) > 20, f"{name}: no one-line description in t2vu --help"
        assert re.search(rf"\b{re.escape(name)} {re.escape(' '.join(line.split()[:3]))}", text), name


@pytest.mark.parametrize("command", sorted(commands()))
def test_every_command_page_opens_with_a_description(capsys, command):
    text = help_text(capsys, command)
    after_usage = text.split(" options: ")[0].split(" positional arguments: ")[0]
    last_flag = after_usage.rindex("]")  # the usage line ends with its last [--flag]
    description = after_usage[last_flag + 1:].strip()
    assert len(description.split()) >= 4, f"t2vu {command} --help has no description: {text[:300]}"


def test_attack_help_lists_every_method_and_attack(capsys):
    from eval.methods import METHODS
    from pipelines.config.attack import ATTACKS

    text = help_text(capsys, "attack")
    methods = re.search(r"config \(([^)]*)\)", text).group(1).split(", ")
    attacks = re.search(r"every attack \(([^)]*)\)", text).group(1).split(", ")
    assert set(methods) == set(METHODS) and "blocklist" in methods  # the hand-typed list had left it out
    assert tuple(attacks) == ATTACKS
