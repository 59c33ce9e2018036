"""The command line's help speaks to operators: what each command does for them, with examples,
and `run --help` lists every job of the registry."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service import cli, jobs

REPO = Path(__file__).resolve().parents[2]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def listed_jobs(help_text: str) -> set[str]:
    """The job names at the start of the lines of a help's `jobs:` section."""
    section = help_text.split("\njobs:\n", 1)[1].split("\n\n", 1)[0]
    return {m.group(1) for m in re.finditer(r"^  ([a-z_0-9]+)\b", section, re.MULTILINE)}


def test_the_program_help_says_what_it_does_for_an_operator():
    """`python -m service --help` (as typed, in a child) describes the service, not the CLI module."""
    done = subprocess.run([sys.executable, "-m", "service", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith("usage: python -m service")
    assert cli.__doc__.splitlines()[0] not in text  # the module's docstring is for developers
    assert "backed up" in text and "fac-db" in text
    assert "\nexamples:\n" in text and "python -m service run s3_restore" in text
    for code in ("0 success", "1 the job failed", "3 refused", "6 `ctl`", "70 internal error"):
        assert code in text
    for name in subcommands(cli.build_parser()):
        assert re.search(rf"^    {name}\s+\S", text, re.MULTILINE), f"{name} has no summary in --help"


@pytest.mark.parametrize("name", sorted(subcommands(cli.build_parser())))
def test_each_command_explains_itself_with_an_example(name):
    """Every subcommand has a description of its own and an example that types it."""
    parser = subcommands(cli.build_parser())[name]
    assert parser.description and len(parser.description) > 60, f"{name}: no description"
    assert parser.description != cli.__doc__
    text = parser.format_help()
    assert "\nexamples:\n" in text, f"{name}: no examples"
    examples = text.split("\nexamples:\n", 1)[1]
    assert f"python -m service {name}" in examples, f"{name}: its examples never type it"


@pytest.mark.parametrize("path", [("run",), ("ctl", "trigger")])
def test_run_and_trigger_help_list_every_job(path):
    """The jobs section of `run --help` and `ctl trigger --help` is the registry, no more, no less."""
    parser = cli.build_parser()
    for name in path:
        parser = subcommands(parser)[name]
    text = parser.format_help()
    assert listed_jobs(text) == set(jobs.JOBS)
    flat = " ".join(text.split())  # the table's wrapped lines as one
    for spec in jobs.JOBS.values():  # each with its arguments and what it is for, whole
        usage = " ".join([spec.name, *spec.arguments, *(f"[{a}]" for a in spec.optional_arguments)])
        assert f"  {usage}" in text
        assert spec.description in flat, f"{spec.name}: its description is not in the table"


def test_jobs_command_prints_the_same_table(capsys):
    """`python -m service jobs` prints the table `run --help` shows."""
    assert cli.main(["jobs"]) == 0
    out = capsys.readouterr().out
    assert listed_jobs("\njobs:\n" + out) == set(jobs.JOBS)
    assert out.strip() == cli.job_table().strip()


def test_help_fits_a_terminal():
    """No line of any help is wider than 120 columns (descriptions are wrapped, never one long line),
    except the copy-pasteable `cf` command examples."""
    parser = cli.build_parser()
    parsers = [parser, *subcommands(parser).values(), *subcommands(subcommands(parser)["ctl"]).values()]
    for p in parsers:
        for line in p.format_help().splitlines():
            assert len(line) <= 120 or line.lstrip().startswith("cf "), f"{p.prog}: {line!r}"
