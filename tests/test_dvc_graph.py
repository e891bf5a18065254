"""dvc.yaml's code dependencies against the code: every pipeline/ file a stage's `ham` command runs (found by
`pipeline.codedeps` from the imports) must be covered by one of the stage's deps, and no dep under pipeline/ may
cover Python the stage does not run. Also: the analysis itself on a small package, and the per-image cache keys
(`codedeps.code_version`) that hash the same closure."""
from __future__ import annotations

import inspect
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline import codedeps, standardise
from pipeline.codedeps import (CodeDepsError, closure, closure_files, code_version, command_modules, commands,
                               direct_imports, stage_dep_problems)
from pipeline.ingest import ingest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "pipeline"
DVC_YAML = REPO / "dvc.yaml"


def edited_dvc_yaml(tmp_path: Path, stage: str, remove: str | None = None, add: str | None = None) -> Path:
    spec = yaml.safe_load(DVC_YAML.read_text())
    deps = spec["stages"][stage]["deps"]
    if remove:
        deps.remove(remove)
    if add:
        deps.append(add)
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- the repository's dvc.yaml ----------------------------------------------------------------------------------


def test_every_stage_depends_on_exactly_the_pipeline_code_it_runs():
    problems = stage_dep_problems(DVC_YAML, PACKAGE)
    assert problems == [], "dvc.yaml deps do not match the code:\n" + "\n".join(problems)


@pytest.mark.parametrize("stage, entry, expected", [
    ("release", "pipeline/isic_export.py",
     ["stage release: pipeline/isic_export.py runs in `ham release` but no dep covers it"]),
    ("standardise", "pipeline/imaging.py",
     ["stage standardise: pipeline/imaging.py runs in `ham standardise` but no dep covers it"]),
    ("split", "pipeline/cli.py", ["stage split: pipeline/cli.py runs in `ham split` but no dep covers it"]),
    ("ingest", "pipeline/sources",  # a folder entry: every file it covered is named
     [f"stage ingest: pipeline/sources/{name} runs in `ham ingest` but no dep covers it"
      for name in sorted(path.name for path in (PACKAGE / "sources").glob("*.py"))]),
])
def test_a_missing_entry_is_reported_exactly(tmp_path, stage, entry, expected):
    assert stage_dep_problems(edited_dvc_yaml(tmp_path, stage, remove=entry), PACKAGE) == expected


def test_an_unneeded_entry_is_reported(tmp_path):
    assert stage_dep_problems(edited_dvc_yaml(tmp_path, "split", add="pipeline/sample.py"), PACKAGE) == [
        "stage split: dep pipeline/sample.py is not code `ham split` runs"]
    # The whole package as one dep covers the stage's code and a lot it does not run.
    problems = stage_dep_problems(edited_dvc_yaml(tmp_path, "split", add="pipeline"), PACKAGE)
    assert len(problems) == 1 and problems[0].startswith("stage split: dep pipeline covers ")
    assert "pipeline/sample.py" in problems[0] and "pipeline/split.py" not in problems[0]


def test_the_module_command_prints_the_problems(tmp_path, capsys):
    assert codedeps.main([str(DVC_YAML)]) == 0
    assert codedeps.main([str(edited_dvc_yaml(tmp_path, "metadata", remove="pipeline/registry.py"))]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "stage metadata: pipeline/registry.py runs in `ham metadata` but no dep covers it")


def test_a_stage_whose_command_is_unknown_is_reported(tmp_path):
    spec = yaml.safe_load(DVC_YAML.read_text())
    spec["stages"]["split"]["cmd"] = "ham splat --params params.yaml"
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump(spec))
    [problem] = stage_dep_problems(path, PACKAGE)
    assert problem.startswith("stage split: ham splat: no such command in pipeline/cli.py (known: ")


def test_release_runs_the_modules_it_imports_and_not_the_other_stages():
    files = set(codedeps.stage_files("ham release --out release", PACKAGE))
    assert {"pipeline/release.py", "pipeline/isic_export.py", "pipeline/vocabulary.py", "pipeline/params.py",
            "pipeline/cli.py", "pipeline/common.py", "pipeline/__init__.py"} <= files
    # Only ingest (and `ham validate`) runs the readers' option checks; no other stage's code includes them.
    assert not files & {"pipeline/ingest.py", "pipeline/standardise.py", "pipeline/filter.py", "pipeline/sample.py",
                        "pipeline/metadata.py", "pipeline/split.py", "pipeline/source_rules.py",
                        "pipeline/sources/__init__.py", "pipeline/unify.py", "pipeline/validate.py"}


def test_the_readers_registry_is_followed():
    from pipeline import sources

    registered = {f"pipeline.sources.{module}" for module, *_ in sources.KINDS.values()}
    assert direct_imports("pipeline.sources", PACKAGE) >= registered
    assert closure(["pipeline.ingest"], PACKAGE) >= registered


def test_the_static_command_names_are_clicks():
    from pipeline.cli import main

    found = commands(PACKAGE)
    assert set(found) == set(main.commands)
    for name, function in found.items():
        if function is not None:
            assert function.name == inspect.unwrap(main.commands[name].callback).__name__


# --- the analysis on a small package ------------------------------------------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


SMALL = {
    "pkg/__init__.py": "",
    "pkg/a.py": """
        def later():
            from .b import helper  # a lazy import counts
            return helper
    """,
    "pkg/b.py": "import pkg.sub.c\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/c.py": "from .. import d\nfrom ..d import NAME\n",
    "pkg/d.py": "NAME = 1\n",
    "pkg/unused.py": "",
    "pkg/reg/__init__.py": """
        import importlib

        KINDS = {"one": ("r1", "read"), "two": ("r2", "read")}

        def reader(kind):
            return importlib.import_module(f"{__name__}.{KINDS[kind][0]}").read
    """,
    "pkg/reg/r1.py": "from ..d import NAME\n",
    "pkg/reg/r2.py": "",
    "pkg/reg/r3.py": "",  # not in the registry: never loaded
    "pkg/cli.py": """
        import click

        from .d import NAME

        @click.group()
        def main():
            pass

        def shared():
            from . import unused
            return unused

        @main.command()
        def first_cmd():
            from .a import later
            shared()

        @main.command("second")
        def other():
            from . import reg

        def stage_command(name):
            from .sub import c  # the factory runs at import time, for every command
            return main.command(name)

        @stage_command("third")
        def third():
            pass

        @click.command()
        def fourth():
            from .reg import r2

        main.add_command(fourth, "last")
    """,
}


def test_closure_follows_relative_absolute_lazy_and_package_imports(tmp_path):
    root = write_package(tmp_path, SMALL)
    assert closure(["pkg.a"], root) == {"pkg", "pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.d"}
    assert closure(["pkg.reg"], root) == {"pkg", "pkg.reg", "pkg.reg.r1", "pkg.reg.r2", "pkg.d"}
    assert closure_files(["pkg.sub.c"], root) == ["pkg/__init__.py", "pkg/d.py", "pkg/sub/__init__.py",
                                                  "pkg/sub/c.py"]


def test_each_command_gets_cli_module_imports_and_only_its_own_lazy_imports(tmp_path):
    root = write_package(tmp_path, SMALL)
    # click drops the _cmd suffix; `fourth` is registered as `last`; `fourth` itself is not a command of `main`
    assert set(commands(root)) == {"first", "second", "third", "fourth", "last"}
    every = {"pkg", "pkg.cli", "pkg.d", "pkg.sub", "pkg.sub.c"}  # cli.py and what runs when it is imported
    assert command_modules("first", root) == every | {"pkg.a", "pkg.b", "pkg.unused"}  # unused: via shared()
    assert command_modules("second", root) == every | {"pkg.reg", "pkg.reg.r1", "pkg.reg.r2"}
    assert command_modules("third", root) == every
    assert command_modules("last", root) == every | {"pkg.reg", "pkg.reg.r1", "pkg.reg.r2"}


def test_an_import_the_analysis_cannot_follow_is_an_error(tmp_path):
    root = write_package(tmp_path, {**SMALL, "pkg/reg/__init__.py": """
        import importlib

        def reader(name):
            return importlib.import_module(name)
    """})
    with pytest.raises(CodeDepsError, match=r"reg/__init__.py:5: imports a module by a name computed at run time"):
        closure(["pkg.reg"], root)


def test_a_registry_naming_a_missing_module_is_an_error(tmp_path):
    registry = SMALL["pkg/reg/__init__.py"].replace('("r2", "read")', '("r9", "read")')
    root = write_package(tmp_path, {**SMALL, "pkg/reg/__init__.py": registry})
    with pytest.raises(CodeDepsError, match=r"registry names module 'r9', which pkg.reg does not have"):
        closure(["pkg.reg"], root)


# --- per-image cache keys hash the closure ------------------------------------------------------------------------


@pytest.fixture
def package_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the real package that code_version reads instead of the installed one."""
    copy = tmp_path / "code" / "pipeline"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codedeps, "PACKAGE_ROOT", copy)
    return copy


def append_comment(path: Path) -> None:
    path.write_text(path.read_text() + "# edited\n")


def test_code_version_changes_with_a_file_in_the_closure_only(package_copy):
    assert code_version("pipeline.standardise") == code_version("pipeline.standardise", root=PACKAGE)
    before = code_version("pipeline.standardise")
    append_comment(package_copy / "release.py")
    append_comment(package_copy / "sources" / "pptx.py")
    append_comment(package_copy / "codedeps.py")  # runs in the stage, but only to compute the key
    assert code_version("pipeline.standardise") == before
    append_comment(package_copy / "imaging.py")
    assert code_version("pipeline.standardise") != before


def test_standardise_recipe_key_follows_imaging(package_copy):
    params = {"width": 600, "height": 450, "quality": 100, "density": 72}
    before = standardise.recipe_key(params)
    append_comment(package_copy / "split.py")
    assert standardise.recipe_key(params) == before
    append_comment(package_copy / "imaging.py")
    edited = standardise.recipe_key(params)
    assert edited != before
    assert standardise.recipe_key({**params, "quality": 95}) != edited


def test_ingest_caches_are_dropped_when_code_it_runs_changes(tmp_path, package_copy):
    src = tmp_path / "src"
    src.mkdir()
    rows = ["file,lesion_key,dx"]
    for number in range(3):
        Image.new("RGB", (40 + number, 30), (10 * number, 100, 200)).save(src / f"img{number}.png")
        # A palette image: stored normalised through imaging.to_rgb.
        Image.new("P", (20, 20 + number), number).save(src / f"pal{number}.png")
        rows += [f"img{number}.png,L{number},nv", f"pal{number}.png,P{number},nv"]
    (src / "index.csv").write_text("\n".join(rows) + "\n")
    sources = [{"name": "local", "kind": "export", "path": str(src), "options": {}}]
    out = tmp_path / "out"

    first = ingest(sources, tmp_path, out, 10_000_000)
    assert (first.units_read, first.decoded) == (6, 6)
    append_comment(package_copy / "release.py")  # not code ingest runs: both caches still hold
    again = ingest(sources, tmp_path, out, 10_000_000)
    assert (again.units_read, again.units_cached, again.decoded) == (0, 6, 0)
    append_comment(package_copy / "imaging.py")  # code ingest runs: every file read and image decoded again
    edited = ingest(sources, tmp_path, out, 10_000_000)
    assert (edited.units_read, edited.units_cached, edited.decoded) == (6, 0, 6)
    assert edited.candidates == first.candidates
