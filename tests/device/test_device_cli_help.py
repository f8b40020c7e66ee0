"""Every device subcommand and argument has help text, and `python -m firmware_sim --version` works."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import firmware_sim
from edgead.cli.device import device
from firmware_sim.__main__ import parser

ROOT = Path(__file__).resolve().parents[2]


def _subparsers(p: argparse.ArgumentParser, path=()):
    """(command path, its parser, the help its parent shows for it) for every (nested) subcommand."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from _subparsers(sub, (*path, name))


def test_every_device_subcommand_and_argument_has_help():
    found = list(_subparsers(parser()))
    names = {" ".join(path) for path, _, _ in found}
    assert {"run", "buffer", "buffer stats", "buffer export", "buffer import", "profile", "bundle",
            "edgetpu"} <= names
    for path, sub, help_text in found:
        assert help_text and len(help_text) > 10, f"{' '.join(path)}: no help in the command list"
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help and len(action.help) > 5, f"{' '.join(path)} {action.dest}: no help text"


def test_version_from_the_package():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "firmware_sim", "--version"], capture_output=True, text=True,
                       env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"firmware_sim {firmware_sim.__version__}"


def test_edgead_device_buffer_commands_have_help():
    r = CliRunner().invoke(device, ["buffer", "--help"])
    assert r.exit_code == 0
    for command in ("stats", "export", "import"):
        line = next(ln for ln in r.output.splitlines() if ln.strip().startswith(command + " "))
        assert len(line.split(None, 1)[1]) > 10, line
    r = CliRunner().invoke(device, ["--help"])
    assert "bundle" in r.output and "edgetpu" in r.output
