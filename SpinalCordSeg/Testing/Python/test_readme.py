"""The README and docs/ as a newcomer reads them.

Every shell block marked ``<!-- runnable -->`` (the marker on the line before a
```sh fence) holds commands that run as written: each ``spinalcordseg`` or
``lesionqc`` line is parsed by the real argument parser, so that a renamed
command, a removed option or a wrong choice fails here. Relative links point to
files that exist.
"""

import re
import shlex
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[3]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = "<!-- runnable -->"


def runnable_commands(page: Path) -> Iterator[Tuple[int, List[str]]]:
    """(line number, argv) of each command in the page's runnable blocks; comments and continuations resolved.

    Example: a block ``spinalcordseg models list  # the models`` gives
    ``(n, ["spinalcordseg", "models", "list"])``.
    """
    lines = page.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        assert lines[index + 1].startswith("```sh"), f"{page.name}:{index + 1}: {MARKER} must precede a ```sh block"
        end = next(i for i in range(index + 2, len(lines)) if lines[i].startswith("```"))
        command, start = "", None
        for number in range(index + 2, end):
            text = lines[number]
            start = number + 1 if start is None else start
            command += text[:-1] + " " if text.endswith("\\") else text
            if text.endswith("\\"):
                continue
            words = shlex.split(command, comments=True)
            if words:
                yield start, words
            command, start = "", None


def all_commands() -> List[Tuple[str, List[str]]]:
    """Every runnable command of the README and docs/, with where it is."""
    return [(f"{page.name}:{line}", argv) for page in PAGES for line, argv in runnable_commands(page)]


def parse(argv: List[str]) -> None:
    """Parse ``argv`` with the real parser of its program; argparse exits 2 on an unknown option or choice."""
    program, *arguments = argv
    if program == "spinalcordseg":
        from SpinalCordSegLib.cli import _command_of, build_parser

        parser = build_parser(_command_of(arguments))
    elif program == "lesionqc":
        from LesionQCLib.cli import build_parser

        parser = build_parser()
    else:
        raise AssertionError(f"runnable blocks hold spinalcordseg and lesionqc commands only, not {program!r}")
    try:
        parser.parse_args(arguments)
    except SystemExit as stop:
        assert stop.code == 0 and "--help" in arguments, f"{shlex.join(argv)} does not parse (exit {stop.code})"


def test_the_readme_has_runnable_commands_of_both_programs():
    programs = {argv[0] for where, argv in all_commands() if where.startswith("README")}
    assert programs == {"spinalcordseg", "lesionqc"}


@pytest.mark.parametrize("where, argv", all_commands(), ids=[where for where, _ in all_commands()])
def test_each_runnable_command_parses(where, argv, capsys):
    parse(argv)


def test_a_wrong_option_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"{MARKER}\n```sh\nspinalcordseg segment -i a.nii.gz \\\n  -m demo-sc --no-such-option\n```\n")
    [(line, argv)] = list(runnable_commands(page))
    assert line == 3 and argv[-1] == "--no-such-option"
    with pytest.raises(AssertionError, match="does not parse"):
        parse(argv)


def test_the_readme_is_short_and_links_every_docs_page():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in text, f"docs/{page.name} is not reachable from the README"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_relative_links_point_to_files_that_exist(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
