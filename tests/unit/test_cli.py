"""The command line: `run` is the product's; `dev` and `sandbox` come from the dev tools, found
through the `relayjob.commands` entry points, and are named as such where they are absent."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from controller.cli import COMMANDS_GROUP, extra_command, load_command
from devtools.cli import sandbox_main
from devtools.dev import dev_main


def test_a_clone_finds_sandbox_and_dev_in_the_dev_tools() -> None:
    assert extra_command("sandbox") is sandbox_main
    assert extra_command("dev") is dev_main
    assert extra_command("no-such-command") is None


def test_sandbox_runs_through_the_installed_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controller", "sandbox", "--help"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "usage: relayjob-operator sandbox" in result.stdout


def test_a_command_whose_package_is_absent_is_not_installed() -> None:
    """The image's metadata registers the dev tools, but it carries no `devtools` package."""
    entry = EntryPoint("sandbox", "relayjob_absent_devtools.cli:sandbox_main", COMMANDS_GROUP)
    assert load_command(entry) is None


def test_a_module_missing_inside_an_installed_command_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dev install that lacks a dependency says which, instead of claiming it is not installed."""
    package = tmp_path / "relayjob_broken_tools"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "cli.py").write_text("import relayjob_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = EntryPoint("sandbox", "relayjob_broken_tools.cli:main", COMMANDS_GROUP)
    with pytest.raises(ModuleNotFoundError, match="relayjob_absent_dependency"):
        load_command(entry)
