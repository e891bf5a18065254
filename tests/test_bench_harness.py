"""The benchmark harness's bookkeeping: results merge across scripts, the table's verdicts, the process-tree
monitor's stage attribution. (The figures themselves are measured by `make bench`, never asserted here.)"""
from __future__ import annotations

import json
import sys

import pytest

from benchmarks import results
from benchmarks.bench_scale import Run, ham_command


@pytest.fixture
def results_file(tmp_path, monkeypatch):
    path = tmp_path / "bench" / "results.json"
    monkeypatch.setattr(results, "RESULTS", path)
    return path


def test_record_merges_with_other_scripts_entries(results_file):
    results.record({"ingest_noop_fraction": results.figure(0.02, "fraction", "python -m benchmarks.bench_ingest")})
    results.record({"noop_repro_s": results.figure(2.5, "s", "dvc repro"),
                    "diff_10k_s": results.missing("s", "ham diff A B", "`ham diff` does not exist yet")})
    results.record({"noop_repro_s": results.figure(4.0, "s", "dvc repro")})
    saved = json.loads(results_file.read_text())
    assert set(saved) == {"ingest_noop_fraction", "noop_repro_s", "diff_10k_s"}
    assert saved["noop_repro_s"]["value"] == 4.0 and saved["noop_repro_s"]["unit"] == "s"
    assert saved["diff_10k_s"]["value"] is None and "does not exist" in saved["diff_10k_s"]["missing"]
    assert all({"value", "unit", "command", "measured_at"} <= set(entry) for entry in saved.values())


def test_table_gives_each_target_and_verdict(results_file):
    table = results.table({
        "noop_repro_s": results.figure(4.0, "s", "dvc repro"),
        "pull_vs_cp_ratio": results.figure(2.0, "x", "dvc pull"),
        "diff_10k_s": results.missing("s", "ham diff", "not yet"),
        "filter_cpu_images_per_s": results.figure(120.5, "images/s", "ham filter"),
    })
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()[2:]}
    assert rows["`noop_repro_s`"][1:3] == ["< 3 s", "MISSED"]
    assert rows["`pull_vs_cp_ratio`"][1:3] == ["<= 3x the copy", "ok"]
    assert rows["`diff_10k_s`"][0] == "—" and rows["`diff_10k_s`"][2:] == ["missing", "not yet"]
    assert rows["`filter_cpu_images_per_s`"][1:3] == ["", ""]  # a throughput: no target


def test_ham_command_names_the_stage_of_a_process():
    assert ham_command(["/repo/.venv/bin/python3", "/repo/.venv/bin/ham", "train-filter", "--params", "p"]) == \
        "train-filter"
    assert ham_command(["ham", "filter"]) == "filter"
    assert ham_command(["/bin/sh", "-c", "ham filter --params p"]) is None  # the shell, before it execs ham
    assert ham_command(["dvc", "repro"]) is None


def test_run_measures_the_whole_process_tree(tmp_path):
    # A parent that starts a child holding ~60 MB: the tree's peak counts the child too.
    child = "import time; block = bytearray(60_000_000); time.sleep(1.0)"
    parent = (f"import subprocess, sys; print(\"Running stage 'grow':\", flush=True); "
              f"subprocess.run([sys.executable, '-c', {child!r}])")
    run = Run([sys.executable, "-c", parent], tmp_path)
    assert run.returncode == 0
    assert run.peak_mb > 60
    assert list(run.stages()) == ["grow"]


def test_a_command_s_time_starts_when_its_process_started(tmp_path):
    """A ham command's seconds count from its process's start (the kernel's record), not from the poll that first
    sees it as ham: here the process is a shell for 0.5 s, then execs a `ham` that runs 0.8 s (the same process,
    as `sh -c` execs a stage's command)."""
    ham = tmp_path / "bin" / "ham"
    ham.parent.mkdir()
    ham.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(0.8)\n")
    ham.chmod(0o755)
    parent = ("import subprocess; print(\"Running stage 'wait':\", flush=True); "
              f"subprocess.run(['sh', '-c', 'sleep 0.5; exec {ham} wait'], check=True)")
    run = Run([sys.executable, "-c", parent], tmp_path)
    seconds = run.stages()["wait"]["command_s"]
    assert seconds is not None and 1.1 <= seconds <= 1.8, seconds  # first seen as ham: about 0.8
