"""The README and the docs site: a short README, `mkdocs build --strict` into a temporary folder (the README's own
docs block, as written), the generated pages (CLI reference, benchmark tables), and every shell block of
README.md and docs/*.md marked and checked (tests/doc_blocks.py says how; the blocks marked `run` are run by the
tests that name them).
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
import subprocess
import warnings

import pytest

from tests.doc_blocks import REPO_ROOT, all_blocks, block, documents
from tests.release_repo import sh

pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]', also in the test extra)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The README's docs block run as written in a copy of what the site is built from; the built folder."""
    root = tmp_path_factory.mktemp("docs")
    for name in ("mkdocs.yml", "README.md"):
        shutil.copy2(REPO_ROOT / name, root / name)
    for name in ("docs", "bench", "benchmarks"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    code = block("readme-docs-build")
    assert "mkdocs build --strict" in code
    result = sh(code, root, {"NO_MKDOCS_2_WARNING": "1"})  # quiet Material's banner about MkDocs 2
    assert "WARNING -" not in result.stderr, result.stderr  # --strict fails on any; none even as a message
    return root / "site"


def test_readme_is_short_and_links_the_guides():
    text = (REPO_ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO_ROOT / target).is_file(), target
    head = text[:text.index("## Set-up")]
    assert "dvc get" in head and "ham verify" in head  # the downstream block comes first
    for missing in ("DESIGN.md", "load average", "Nov 2026"):
        assert missing not in text


def test_site_builds_strict_with_generated_pages(site):
    nav = (REPO_ROOT / "mkdocs.yml").read_text()
    for page in ("maintainer.md", "downstream.md", "s3-dask.md", "extending.md", "filter.md", "reliability.md",
                 "benchmarks.md", "cli.md", "design.md"):
        assert page in nav and (site / page.replace(".md", "") / "index.html").is_file(), page
    assert "The image-type filter" in (site / "filter" / "index.html").read_text()

    # The CLI reference comes from the click commands: every command and an option of one.
    from pipeline.cli import main

    cli = (site / "cli" / "index.html").read_text()
    for name in main.commands:
        assert f"ham {name}" in cli, name
    assert "--annotations" in cli and "--fail-on" in cli

    # The benchmark tables come from bench/results.json, with each figure's value and verdict.
    from benchmarks.results import _fmt

    results = json.loads((REPO_ROOT / "bench" / "results.json").read_text())
    page = (site / "benchmarks" / "index.html").read_text()
    assert "<!-- bench:" not in page
    for name in ("full_build_s", "incremental_fraction", "dedupe_recall_re-encoded_q50", "filter_raw_accuracy"):
        entry = results[name]
        assert f"<code>{name}</code>" in page and _fmt(entry["value"], entry["unit"]) in page, name
    assert "MISSED" in page and "load average" not in page


def test_every_shell_block_is_marked_and_every_run_block_is_run():
    blocks = all_blocks()
    assert {b.file.name for b in blocks} >= {"README.md", "s3-dask.md", "downstream.md"}
    unmarked = [b.where() for b in blocks if not b.kind]
    assert not unmarked, f"shell blocks without `<!-- run: NAME -->` or `<!-- check: REASON -->`: {unmarked}"
    names = [b.name for b in blocks if b.kind == "run"]
    assert len(names) == len(set(names)), names
    tests = "".join(p.read_text() for p in (REPO_ROOT / "tests").glob("test_*.py"))
    for name in names + ["loader-example"]:
        assert f'block("{name}"' in tests, f"no test runs the block `{name}`"
    checked = [b for b in blocks if b.kind == "check"]
    assert len(checked) <= len(blocks) // 3, [b.where() for b in checked]  # rare
    for b in checked:
        assert len(b.name) > 20, f"{b.where()}: say why the block cannot run"


def _commands(text: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split at `&&`, `||`,
    `;`, `|` and `&`; here-document bodies skipped."""
    text = re.sub(r"<<'?(\w+)'?\n.*?\n\1\n", "\n", text.replace("\\\n", " "), flags=re.S)
    commands = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # an unclosed quote: bash -n reports it
            continue
        current = []
        for token in tokens + [";"]:
            if set(token) <= set(";&|") and token:
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
    return commands


def _dvc_rejects(args: list[str]) -> str | None:
    from dvc.cli import DvcParserError
    from dvc.cli.parser import get_main_parser

    out = io.StringIO()
    try:
        with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
            get_main_parser().parse_args(args)
    except (DvcParserError, SystemExit):
        return out.getvalue().strip().splitlines()[-1] if out.getvalue().strip() else "rejected"
    return None


def _ham_rejects(args: list[str]) -> str | None:
    import click

    from pipeline.cli import main

    try:
        context = main.make_context("ham", list(args))
        with warnings.catch_warnings():  # click 8.2 deprecates protected_args, where the subcommand's name still is
            warnings.simplefilter("ignore", DeprecationWarning)
            name, command, rest = main.resolve_command(context, [*context.protected_args, *context.args])
        command.make_context(name, rest, parent=context)
    except click.exceptions.Exit:
        return None
    except click.ClickException as error:
        return error.format_message()
    return None


def test_every_shell_block_is_valid_bash_dvc_ham_and_make():
    targets = set(re.findall(r"^([\w.-]+):", (REPO_ROOT / "Makefile").read_text(), re.M))
    problems, seen = [], {"dvc": 0, "ham": 0, "make": 0}
    for b in all_blocks():
        syntax = subprocess.run(["bash", "-n"], input=b.text, capture_output=True, text=True)
        if syntax.returncode:
            problems.append(f"{b.where()}: bash -n: {syntax.stderr.strip()}")
        for command in _commands(b.text):
            while command and re.match(r"^\w+=", command[0]):  # VAR=value before a command
                command = command[1:]
            if command[:1] == ["!"]:
                command = command[1:]
            if not command or command[0] not in seen:
                continue
            seen[command[0]] += 1
            if command[0] == "dvc":
                why = _dvc_rejects(command[1:])
            elif command[0] == "ham":
                why = _ham_rejects(command[1:])
            else:
                why = None if all(t in targets or t.startswith("-") or "=" in t for t in command[1:]) else \
                    f"no such make target among {sorted(targets)}"
            if why:
                problems.append(f"{b.where()}: `{' '.join(command)}`: {why}")
    assert not problems, "\n".join(problems)
    assert seen["dvc"] > 20 and seen["ham"] > 8 and seen["make"] >= 3, seen


def test_the_checks_catch_what_the_issue_found():
    """The checks above are not vacuous: DVC 3's parser rejects the old hint, click an unknown option."""
    assert _dvc_rejects(["fetch", "-r", "shared", "--rev", "v1.0"])
    assert _dvc_rejects(["fetch", "--all-tags", "release"]) is None
    assert _ham_rejects(["verify", "--no-such-option"]) and _ham_rejects(["no-such-command"])
    assert _ham_rejects(["diff", "v1.0", "v1.1"]) is None
    assert _commands("a=1 dvc get \"$R\" x && ham verify y | tee z # c\ncat <<EOF\nq\nEOF\n") == \
        [["a=1", "dvc", "get", "$R", "x"], ["ham", "verify", "y"], ["tee", "z"], ["cat"]]
    assert [p.name for p in documents()][0] == "README.md"
