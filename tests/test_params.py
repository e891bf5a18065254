"""params.yaml: each source kind's typed options and their schema, a source's `dataset`, the repository's raw
source folders, every section closed to unknown keys, values that make a step meaningless, and every stage
checking the whole params file first with the message `ham validate` gives."""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline import sources
from pipeline.cli import main
from pipeline.validate import validate_params
from pipeline.schema_messages import Problem, load_schema
from pipeline.sources import OptionError


def params_text(repo_root: Path) -> str:
    return (repo_root / "params.yaml").read_text()


def line_of(text: str, fragment: str) -> int:
    """1-based line of the first occurrence of `fragment` in `text`."""
    assert text.count(fragment) == 1, fragment
    return text[:text.index(fragment)].count("\n") + 1


# ------------------------------------------------------------------------------------------------- schema vs readers

def test_schema_kinds_and_options_equal_the_readers_registry():
    source = load_schema("params")["$defs"]["source"]
    assert set(source["properties"]["kind"]["enum"]) == set(sources.KINDS)
    branches = {branch["if"]["properties"]["kind"]["const"]: branch["then"]["properties"]["options"]["$ref"]
                for branch in source["allOf"]}
    assert set(branches) == set(sources.KINDS)
    definitions = load_schema("params")["$defs"]
    for kind, reference in branches.items():
        schema_keys = set(definitions[reference.rsplit("/", 1)[1]]["properties"])
        assert schema_keys == {f.name for f in fields(sources.options_for(kind))}, kind
        assert definitions[reference.rsplit("/", 1)[1]]["additionalProperties"] is False


def test_options_defaults_are_the_documented_ones():
    from pipeline.sources.pptx import DEFAULT_DIAGNOSIS_PATTERN, DEFAULT_ID_PATTERN

    pptx = sources.options_for("pptx").from_options("decks", None)
    assert (pptx.id_pattern.pattern, pptx.diagnosis_pattern.pattern) == (DEFAULT_ID_PATTERN, DEFAULT_DIAGNOSIS_PATTERN)
    assert (pptx.pattern, pptx.legacy_pattern, pptx.header_row, pptx.convert_timeout) == ("**/*.pptx", "**/*.ppt", 1,
                                                                                          300.0)
    assert sources.options_for("pptx").from_options("decks", {"diagnosis_pattern": None}).diagnosis_pattern is None
    export = sources.options_for("export").from_options("db", {"columns": {"file": "name"}, "image_type": "dsc"})
    assert (export.index, export.sheet, export.columns, export.images, export.image_type) == (
        "index.csv", None, {"file": "name"}, ".", "dsc")
    series = sources.options_for("series").from_options("mm", {"min_months": 12})
    assert (series.lesions_file, series.lesions_named, series.min_visits, series.min_months) == (
        "lesions.csv", False, 2, 12.0)
    ham = sources.options_for("ham10000").from_options("public", {"test_zip": None})
    assert (ham.zips, ham.test_zip, ham.max_member_bytes) == (
        ("HAM10000_images_part_1.zip", "HAM10000_images_part_2.zip"), "", 256 * 1024 * 1024)
    with pytest.raises(Exception):  # frozen: a reader cannot change its options
        export.index = "other.csv"


@pytest.mark.parametrize("kind, options, key, message", [
    ("export", {"colums": {"file": "name"}}, "colums",
     "unknown option of export sources (did you mean 'columns'?); known: image_type, index, sheet, columns, images"),
    ("export", {"columns": ["file", "lesion"]}, "columns", "expected a mapping, got a list"),
    ("export", {"columns": {"lesionkey": "lesion"}}, "columns",
     "unknown key 'lesionkey' (did you mean 'lesion_key'?); expected some of: file, lesion_key, image_id, diagnosis, "
     "dx, dx_type, age, sex, localization, visit_date, image_type_hint, split_hint"),
    ("export", {"columns": {"file": 3}}, "columns", "file: expected text, got an integer"),
    ("export", {"image_type": "dermoscopic"}, "image_type", "expected one of: dsc, macro, clinic"),
    ("folder", {"index": ""}, "index", "must not be empty"),
    ("pptx", {"id_pattern": r"(\d+"}, "id_pattern",
     r"'(\d+' is not a valid regular expression (missing ), unterminated subpattern at position 0)"),
    ("pptx", {"id_pattern": r"\d{5,}"}, "id_pattern", r"'\d{5,}' needs 1 group (...)"),
    ("pptx", {"id_pattern": None}, "id_pattern", "expected a regular expression (text), got nothing"),
    ("pptx", {"header_row": 0}, "header_row", "must be at least 1"),
    ("series", {"date_pattern": r"(\d{4})"}, "date_pattern",
     r"'(\d{4})' needs named groups year, month, day (or 3 groups in that order)"),
    ("series", {"min_visits": "two"}, "min_visits", "expected an integer, got text"),
    ("series", {"min_visits": 2.5}, "min_visits", "expected an integer, got a number"),
    ("slides", {"dark_fraction": 2}, "dark_fraction", "must be at most 1"),
    ("slides", {"margin": True}, "margin", "expected a number, got true or false"),
    ("ham10000", {"zips": "HAM10000_images_part_1.zip"}, "zips", "expected a list, got text"),
    ("isic", {"localization_map": {"head/neck": 3}}, "localization_map", "head/neck: expected text, got an integer"),
])
def test_typed_options_reject_unknown_keys_and_bad_values(kind, options, key, message):
    with pytest.raises(OptionError) as caught:
        sources.options_for(kind).from_options("batch2", options)
    assert (caught.value.key, caught.value.message) == (key, message)
    assert str(caught.value) == f"source batch2: option {key}: {message}"


def test_options_that_are_not_a_mapping():
    with pytest.raises(OptionError, match=r"^source batch2: option options: expected a mapping of option names to "
                                          r"values, got a list$"):
        sources.options_for("export").from_options("batch2", ["index.csv"])


# ------------------------------------------------------------------------------------------------- ham validate

NEW_SOURCES = """\
    - name: rosendahl_decks
      kind: pptx
      path: data/raw/decks
      options: {id_pattern: "(\\\\d+"}
    - name: batch2
      kind: export
      path: data/raw/batch2
      dataset: vidir_modern
      options:
        colums: {file: name}
    - name: archive
      kind: isic
      path: data/raw/archive
      options: {localization_map: [back]}
"""


def test_validate_names_bad_source_options_and_missing_dataset_with_their_lines(tmp_path, repo_root):
    text = params_text(repo_root)
    marker = "  # Images over this many pixels"
    text = text.replace(marker, NEW_SOURCES + marker, 1)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    first = line_of(text, "    - name: rosendahl_decks")
    result = CliRunner().invoke(main, ["validate", "--format", "json", str(path)])
    assert result.exit_code == 1
    assert [Problem(**p) for p in json.loads(result.output)] == [
        Problem(str(path), first, "ingest.sources[4].dataset", "rosendahl_decks",
                "source rosendahl_decks needs `dataset:` (one of rosendahl, vidir_modern, vidir_molemax, vienna_dias, "
                "unknown), the dataset value its images get in the release, because its name is not one of them"),
        Problem(str(path), first + 3, "ingest.sources[4].options.id_pattern", r"(\d+",
                r"source rosendahl_decks: '(\d+' is not a valid regular expression (missing ), unterminated "
                r"subpattern at position 0)"),
        Problem(str(path), first + 9, "ingest.sources[5].options.colums", "colums",
                "unexpected key 'colums' (did you mean 'columns'?)"),
        Problem(str(path), first + 13, "ingest.sources[6].options.localization_map", '["back"]',
                "expected a mapping or nothing, got a list"),
    ]


def test_metadata_datasets_is_gone(tmp_path, repo_root):
    text = params_text(repo_root)
    marker = "  official_lesion_ids_from: []"
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(marker, "  datasets: {queensland: rosendahl}\n" + marker, 1))
    assert validate_params(path) == [Problem(str(path), line_of(text, marker), "metadata.datasets", "datasets",
                                             "no longer read: declare `dataset:` on each source under ingest.sources")]


# ------------------------------------------------------------------------------------------------- raw source folders

def one_source_repository(tmp_path: Path, repo_root: Path) -> tuple[Path, str]:
    """A repository root (dvc.yaml beside params.yaml) whose only raw source is data/raw/queensland."""
    shutil.copyfile(repo_root / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load(params_text(repo_root))
    params["ingest"]["sources"] = [{"name": "queensland", "kind": "pptx", "path": "data/raw/queensland",
                                    "dataset": "rosendahl"}]
    text = yaml.safe_dump(params, sort_keys=False)
    (tmp_path / "params.yaml").write_text(text)
    return tmp_path / "params.yaml", text


def ingest_in(folder: Path, params: Path):
    return CliRunner().invoke(main, ["ingest", "--params", str(params), "--out", str(folder / "out")])


def test_a_missing_source_folder_is_named_before_the_dependency_advice(tmp_path, repo_root):
    params, text = one_source_repository(tmp_path, repo_root)
    line, f = line_of(text, "path: data/raw/queensland"), str(params)
    missing = Problem(f, line, "ingest.sources[0].path", "data/raw/queensland",
                      "source queensland: folder data/raw/queensland does not exist")
    not_a_dependency = Problem(f, line, "ingest.sources[0].path", "data/raw/queensland",
                               "not a dependency of stage ingest in dvc.yaml, so `dvc repro` would not see it change: "
                               "add `- data/raw/queensland` under stages.ingest.deps")
    assert validate_params(params) == [missing, not_a_dependency]
    result = ingest_in(tmp_path, params)
    assert (result.exit_code, result.output) == (
        1, f"Error: {missing.line()} (and 1 more; see `ham validate {params}`)\n")

    (tmp_path / "data/raw/queensland").mkdir(parents=True)
    assert validate_params(params) == [not_a_dependency]
    result = ingest_in(tmp_path, params)
    assert (result.exit_code, result.output) == (1, f"Error: {not_a_dependency.line()}\n")
    assert not (tmp_path / "out").exists()  # refused before reading anything

    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    stages["stages"]["ingest"]["deps"].insert(0, "data/raw/queensland")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    assert validate_params(params) == []
    result = ingest_in(tmp_path, params)
    assert result.exit_code == 0 and "ingest: 0 candidates" in result.output
    assert "raw source data/raw/queensland is not tracked by a .dvc file" in result.output


def test_a_tracked_folder_not_pulled_yet_stops_only_the_stage(tmp_path, repo_root):
    """A fresh clone before `dvc pull`: the params are valid (CI validates them without data), ingest says how to
    fetch the folder."""
    params, text = one_source_repository(tmp_path, repo_root)
    stages = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
    stages["stages"]["ingest"]["deps"].insert(0, "data/raw/queensland")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/queensland.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n"
                                                      "  path: queensland\n")
    assert validate_params(params) == []
    result = ingest_in(tmp_path, params)
    assert result.exit_code == 1
    assert result.output == (f"Error: {params}:{line_of(text, 'path: data/raw/queensland')}: ingest.sources[0].path: "
                             "source queensland: folder data/raw/queensland does not exist in this checkout; it is "
                             "tracked by data/raw/queensland.dvc: run `dvc pull data/raw/queensland.dvc` (or "
                             "`dvc checkout data/raw/queensland.dvc`)\n")


# ------------------------------------------------------------------------------------------------- stages

@pytest.mark.parametrize("command, old, new, field, message", [
    ("ingest", "  max_pixels: 100000000", '  max_pixels: "lots"', "ingest.max_pixels", "expected an integer, got text"),
    ("train-filter", "  epochs: 30", '  epochs: "ten"', "filter.epochs", "expected an integer, got text"),
    ("filter", "  min_confidence: 0.5", "  min_confidence: 5", "filter.min_confidence", "must be at most 1"),
    ("standardise", "  quality: 100", "  quality: 101", "standardise.quality", "must be at most 100"),
    ("metadata", "  age_cap: 85", "  age_cap: -5", "metadata.age_cap", "must be at least 0"),
    ("split", "  test_fraction: 0.2", "  test_fraction: a fifth", "split.test_fraction", "expected a number, got text"),
    ("release", "  isic_license: CC-BY-NC", "  isic_license: [CC-BY-NC]", "release.isic_license",
     "expected text, got a list"),
])
def test_every_stage_checks_its_own_section_first(tmp_path, repo_root, command, old, new, field, message):
    text = params_text(repo_root)
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new, 1))
    line = line_of(text, old)
    outputs = {"--out": str(tmp_path / "out")} if command not in ("train-filter", "split") else {}
    result = CliRunner().invoke(main, [command, "--params", str(path), *sum(outputs.items(), ())])
    expected = f"{path}:{line}: {field}: {message}"
    assert (result.exit_code, result.output) == (1, f"Error: {expected}\n")
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    # the same line `ham validate` reports
    assert [p.line() for p in validate_params(path)] == [expected]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------- closed sections

@pytest.mark.parametrize("old, new, field, message", [
    ("  epochs: 30", "  epoch: 30", "filter.epoch", "unexpected key 'epoch' (did you mean 'epochs'?)"),
    ("  quality: 100", "  qualty: 100", "standardise.qualty", "unexpected key 'qualty' (did you mean 'quality'?)"),
    ("  max_pixels: 100000000", "  max_pixel: 100000000", "ingest.max_pixel",
     "unexpected key 'max_pixel' (did you mean 'max_pixels'?)"),
    ("  age_cap: 85", "  age_cap: 85\n  agecap: 80", "metadata.agecap", "unexpected key 'agecap' (did you mean "
     "'age_cap'?)"),
    ("    image_start: 9000000", "    image_start: 9000000\n    image_stat: 1", "metadata.ids.image_stat",
     "unexpected key 'image_stat' (did you mean 'image_start'?)"),
    ("  seed: 20180814\n\nrelease:", "  seed: 20180814\n  test_fracton: 0.3\n\nrelease:", "split.test_fracton",
     "unexpected key 'test_fracton' (did you mean 'test_fraction'?)"),
    ("  license: CC", "  licence: CC", "release.licence", "unexpected key 'licence' (did you mean 'license'?)"),
    ("standardise:  # the authors'", "standardize:  # the authors'", "standardize",
     "unexpected key 'standardize' (did you mean 'standardise'?)"),
    # values that make a step meaningless
    ("  epochs: 30", "  epochs: 0", "filter.epochs", "must be at least 1"),
    ("  batch_size: 32", "  batch_size: 0", "filter.batch_size", "must be more than 0"),
    ("  inference_batch_size: 256", "  inference_batch_size: -4", "filter.inference_batch_size",
     "must be more than 0"),
    ("  min_confidence: 0.5", "  min_confidence: 0.95", "filter.min_confidence",
     "above review_below (0.9): an image the model scores between them would be dropped without going to review"),
    ("  holdout_fraction: 0.1", "  holdout_fraction: 1.0", "filter.holdout_fraction",
     "holds out every annotated image: nothing is left to train on"),
    ("  keep_types: [dsc]", "  keep_types: []", "filter.keep_types", "keeps no image type: the release would "
     "hold no image"),
    ("  train_device: cpu", "  train_device: gpu", "filter.train_device", "expected one of: cpu, auto, cuda"),
    ("    review_distance: 30", "    review_distance: 5", "standardise.dedupe.review_distance",
     "below max_distance (10): no pair could ever be listed for review"),
    ("  max_pixels: 100000000", "  max_pixels: 4000", "ingest.max_pixels",
     "below min_side squared (64x64 = 4096): every image would be rejected"),
    ("  max_aspect: 4.0", "  max_aspect: 0.75", "ingest.max_aspect", "below 1: the long side over the short one is "
     "never under 1, so every image would be rejected (0: no limit)"),
])
def test_unknown_keys_and_meaningless_values_are_named_with_their_line(tmp_path, repo_root, old, new, field,
                                                                       message):
    text = params_text(repo_root)
    path = tmp_path / "params.yaml"
    changed = text.replace(old, new, 1)
    assert changed != text
    path.write_text(changed)
    line = changed.splitlines().index(next(line for line in changed.splitlines()
                                           if line.strip().startswith(field.rsplit(".", 1)[-1] + ":"))) + 1
    problems = [p for p in validate_params(path) if p.field == field]
    assert [(p.row, p.message) for p in problems] == [(line, message)], validate_params(path)


def test_a_cross_key_rule_is_not_stacked_on_a_schema_problem(tmp_path, repo_root):
    """min_confidence 5 is out of range: said once, not again as 'above review_below'."""
    path = tmp_path / "params.yaml"
    path.write_text(params_text(repo_root).replace("  min_confidence: 0.5", "  min_confidence: 5", 1))
    assert [(p.field, p.message) for p in validate_params(path)] == [("filter.min_confidence", "must be at most 1")]


def test_a_retired_key_says_what_to_write_instead(tmp_path, repo_root):
    path = tmp_path / "params.yaml"
    path.write_text(params_text(repo_root).replace("  age_cap: 85", "  age_cap: 85\n  datasets: {}", 1))
    assert [(p.field, p.message) for p in validate_params(path)] == [
        ("metadata.datasets", "no longer read: declare `dataset:` on each source under ingest.sources")]


def test_every_key_the_stages_read_is_in_the_schema(repo_root):
    """The repository's params.yaml sets every key the stages read (the schema's closed sections would reject a
    key it does not know): each key of the file is a property of its section in the schema."""
    params = yaml.safe_load(params_text(repo_root))
    schema = load_schema("params")["properties"]
    for section, values in params.items():
        assert schema[section].get("additionalProperties") is False, section
        assert set(values) <= set(schema[section]["properties"]), section


# Every command dvc.yaml runs (checked below against dvc.yaml), and problems outside most of their sections
STAGE_COMMANDS = ["ingest", "collect-annotated", "train-filter", "filter", "standardise", "metadata", "split",
                  "release"]
OTHER_SECTION_PROBLEMS = [
    ("  epochs: 30", "  epochs: 30\n  epoch: 3", "filter.epoch", "unexpected key 'epoch' (did you mean 'epochs'?)"),
    ("standardise:  # the authors'", "standardize:  # the authors'", "standardise",
     "missing required key 'standardise'"),
    ("    review_distance: 30", "    review_distance: 5", "standardise.dedupe.review_distance",
     "below max_distance (10): no pair could ever be listed for review"),
    ("  epochs: 30", "  epochs: 0", "filter.epochs", "must be at least 1"),
]


@pytest.mark.parametrize("old, new, field, message", OTHER_SECTION_PROBLEMS)
def test_every_stage_refuses_a_file_validate_rejects(tmp_path, repo_root, monkeypatch, old, new, field, message):
    """Whatever section the problem is in, every stage stops before any work with `ham validate`'s first line."""
    text = params_text(repo_root)
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(old, new, 1))
    problems = validate_params(path)
    assert problems and problems[0].field == field and problems[0].message == message, problems
    more = f" (and {len(problems) - 1} more; see `ham validate {path}`)" if len(problems) > 1 else ""
    monkeypatch.chdir(tmp_path)  # the commands' default paths: nothing of the repository is touched
    for command in STAGE_COMMANDS:
        result = CliRunner().invoke(main, [command, "--params", str(path)])
        assert (result.exit_code, result.output) == (1, f"Error: {problems[0].line()}{more}\n"), command
        assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing written, nothing made


def test_stage_commands_are_those_dvc_yaml_runs(repo_root):
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    assert sorted(stage["cmd"].split()[1] for stage in stages.values()) == sorted(STAGE_COMMANDS)


def test_cli_imports_no_stage_module():
    """Every module `pipeline/cli.py` imports at the top is a code dependency of every stage."""
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, pipeline.cli; print(' '.join(sorted(m for m in "
                             "sys.modules if m.startswith('pipeline'))))"], capture_output=True, text=True, check=True)
    # pinned_cpu only sets environment variables (before torch runs: see pipeline/pinned_cpu.py)
    assert loaded.stdout.split() == ["pipeline", "pipeline.cli", "pipeline.common", "pipeline.pinned_cpu"]
    result = CliRunner().invoke(main, ["unify", "--help"])  # the lazily registered command still works
    assert result.exit_code == 0 and "CSVFILE" in result.output


def test_a_params_text_found_valid_is_not_checked_against_the_schema_again(tmp_path, repo_root, monkeypatch):
    """Stages skip jsonschema (0.14 s to import) for a params text this machine already found valid; a text with a
    problem is never noted, so the problem is found and worded the same every time."""
    import os
    import subprocess
    import sys

    from pipeline import params as params_module

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    checked = []
    real = params_module._schema_problems
    monkeypatch.setattr(params_module, "_schema_problems", lambda *args: checked.append(1) or real(*args))
    good, bad = tmp_path / "good" / "params.yaml", tmp_path / "bad" / "params.yaml"
    for path, text in ((good, params_text(repo_root)),
                       (bad, params_text(repo_root).replace("  epochs: 30", '  epochs: "ten"', 1))):
        path.parent.mkdir()
        path.write_text(text)

    assert params_module.params_problems(good, "split") == [] and len(checked) == 1
    assert params_module.params_problems(good, "split") == [] and len(checked) == 1  # noted: not checked again
    notes = list((tmp_path / "cache" / "ham10000-repo" / "valid-params").iterdir())
    assert len(notes) == 1
    for _ in range(2):
        assert [p.field for p in params_module.params_problems(bad)] == ["filter.epochs"]
    assert len(checked) == 3 and len(list(notes[0].parent.iterdir())) == 1
    good.write_text(params_text(repo_root).replace("  epochs: 30", "  epochs: 31", 1))  # another valid text
    assert params_module.params_problems(good, "split") == [] and len(checked) == 4

    # a stage run on the noted text does not import jsonschema at all
    code = ("import sys; from pipeline.params import load_section; "
            f"load_section({str(good)!r}, 'split'); print('jsonschema' in sys.modules)")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert run.stdout.split() == ["False"]


def test_the_validity_note_covers_every_check(tmp_path, repo_root, monkeypatch):
    """A note says only that the schema passed, under its key (params text, schema bytes, jsonschema): a text noted
    valid under a schema with an open section is checked again once the section is closed, and a rule across keys
    (plain Python, never noted) is found on a noted text every time."""
    import json

    from pipeline import params as params_module
    from pipeline import schema_messages

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    checked = []
    real = params_module._schema_problems
    monkeypatch.setattr(params_module, "_schema_problems", lambda *args: checked.append(1) or real(*args))
    typo = tmp_path / "typo.yaml"
    typo.write_text(params_text(repo_root).replace("  epochs: 30", "  epochs: 30\n  epoch: 3", 1))

    open_schema = tmp_path / "open-schemas"
    shutil.copytree(schema_messages.SCHEMA_DIR, open_schema)
    schema = json.loads((open_schema / "params.schema.json").read_text())
    del schema["properties"]["filter"]["additionalProperties"]
    (open_schema / "params.schema.json").write_text(json.dumps(schema))
    try:
        monkeypatch.setattr(schema_messages, "SCHEMA_DIR", open_schema)
        schema_messages.load_schema.cache_clear(), schema_messages.validator.cache_clear()
        assert params_module.params_problems(typo) == [] and len(checked) == 1  # noted valid under the open schema
        monkeypatch.setattr(schema_messages, "SCHEMA_DIR", repo_root / "schemas")
        schema_messages.load_schema.cache_clear(), schema_messages.validator.cache_clear()
        assert [p.field for p in params_module.params_problems(typo)] == ["filter.epoch"] and len(checked) == 2
    finally:
        schema_messages.load_schema.cache_clear(), schema_messages.validator.cache_clear()

    crossed = tmp_path / "crossed.yaml"
    crossed.write_text(params_text(repo_root).replace("  min_confidence: 0.5", "  min_confidence: 0.95", 1))
    for _ in range(2):
        assert [p.field for p in params_module.params_problems(crossed)] == ["filter.min_confidence"]
    assert len(checked) == 3  # the schema passed once and was noted; the rule ran both times
