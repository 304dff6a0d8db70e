"""The command lines' help: every command listed, and nothing heavy imported to show it.

How fast ``--help`` comes back is measured by ``benchmarks/bench_startup.py``;
these tests check what makes it fast (which modules a call imports) and that
the help is complete.
"""

import argparse
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

from SpinalCordSegLib.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[4]
HEAVY = ("torch", "nnunetv2", "pandas", "numpy", "scipy", "SimpleITK", "matplotlib", "sklearn", "skimage")


def _command_modules():
    """Every command module of the ``cli`` package, whether COMMANDS names it or not."""
    import SpinalCordSegLib.cli

    helpers = ("__main__", "arguments")  # the entry point and the argument types the commands share
    return sorted(m.name for m in pkgutil.iter_modules(SpinalCordSegLib.cli.__path__) if m.name not in helpers)


def _registered():
    """{command: (help, its ArgumentParser)} as the command modules register them."""
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    for module in _command_modules():
        importlib.import_module(f"SpinalCordSegLib.cli.{module}").register(subparsers)
    helps = {action.dest: action.help for action in subparsers._choices_actions}
    return {name: (helps[name], sub) for name, sub in subparsers.choices.items()}


def _actions(parser: argparse.ArgumentParser):
    """Names of a parser's sub-commands."""
    return [name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices]


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_help_lists_every_command_with_its_modules_help(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    listing = _flat(capsys.readouterr().out)
    registered = _registered()
    assert sorted(registered) == sorted(COMMANDS), "a command module's commands are missing from cli.COMMANDS"
    for name, (help_text, _) in registered.items():
        assert help_text == COMMANDS[name][1], name
        assert f"{name} {_flat(help_text)}" in listing


def test_round_help_names_every_round_action(capsys):
    actions = _actions(_registered()["round"][1])
    assert {"merge", "rank", "mark", "next", "sync", "export"} <= set(actions)
    for action in actions:
        assert re.search(rf"\b{action}\b", COMMANDS["round"][1]), action
    with pytest.raises(SystemExit):
        main(["round", "--help"])
    shown = capsys.readouterr().out
    assert all(re.search(rf"^\s+{action}\s", shown, re.M) for action in actions)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: spinalcordseg {command}")


def test_the_command_line_reference_shows_every_command():
    readme = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for name, (_, parser) in _registered().items():
        assert f"spinalcordseg {name}" in readme, name
        for action in _actions(parser):
            if name == "round":
                assert f"spinalcordseg round {action}" in readme, action


def _imported_by(code: str):
    """Heavy modules imported by running ``code`` in a fresh interpreter."""
    probe = code + f"\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env=_env(), cwd=str(REPO))
    return json.loads(result.stdout.strip().splitlines()[-1])


def _env():
    import os

    paths = [str(REPO / "SpinalCordSeg"), str(REPO / "LesionQC")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]))


@pytest.mark.parametrize("argv", [["--help"], ["segment"], ["segment", "--help"], ["demo", "--help"],
                                  ["models", "--help"], ["bogus"]])
def test_help_and_argument_errors_import_nothing_heavy(argv):
    code = ("import contextlib, io\nfrom SpinalCordSegLib.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            f"    try: main({argv!r})\n    except SystemExit: pass")
    assert _imported_by(code) == []


@pytest.mark.parametrize("argv", [["--help"], ["make-session"], ["analyze", "--help"]])
def test_lesionqc_help_imports_nothing_heavy(argv):
    code = ("import contextlib, io\nfrom LesionQCLib.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            f"    try: main({argv!r})\n    except SystemExit: pass")
    assert _imported_by(code) == []
