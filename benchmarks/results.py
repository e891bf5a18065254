"""bench/results.json: every benchmark's figures, merged, and the table `make bench` prints.

The file is one JSON object mapping each figure's name to {"value", "unit", "command"} plus optional fields:
"note" (what was measured, on how many images, which stage holds a missed target back), "machine" (the machine
and its load when measured), "measured_at" (UTC), and "missing" (why there is no value yet, with "value": null).
Each benchmark script merges its own keys with `record` and leaves the other scripts' keys as they are.
"""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("HAM_BENCH_RESULTS", REPO / "bench" / "results.json"))

# figure -> (comparison, target, as written in issue 13); figures without a target are baselines or throughputs
TARGETS = {
    "full_build_s": ("<=", 300, "<= 5 min at 10k images"),
    "full_build_peak_rss_mb": ("<=", 1500, "<= 1.5 GB"),
    "noop_repro_s": ("<", 3, "< 3 s"),
    "incremental_fraction": ("<=", 0.05, "<= 5 % of the full build"),
    "peak_rss_10k_mb": ("<=", 1500, "<= 1.5 GB"),
    "peak_rss_growth_1k_to_10k": ("<=", 1.3, "<= 1.3x"),
    "diff_10k_s": ("<", 1, "< 1 s"),
    "pull_vs_cp_ratio": ("<=", 3, "<= 3x the copy"),
    # issue 22, the image-type filter on collections and conditions training never saw (benchmarks/bench_filter.py)
    "filter_raw_accuracy": (">=", 0.99, ">= 99 %"),
    "filter_sent_to_review": ("<=", 0.10, "<= 10 %"),
    "filter_error_rate_without_review": ("<=", 0.005, "<= 0.5 %"),
    "filter_watermark_crop_change_points": ("<=", 1, "<= 1 point"),
    "filter_training_seconds_cpu": ("<=", 900, "<= 15 min on 2 cores"),
    "filter_real_cpu_images_per_s": (">=", 300, ">= 300 images/s on 2 cores"),
    "filter_real_peak_rss_10k_mb": ("<", 1000, "< 1 GB at 10k candidates"),
}


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    load = ", load average {:.1f}".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else ""
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores {model}{memory}{load}".strip()


def load() -> dict:
    if RESULTS.exists():
        return json.loads(RESULTS.read_text())
    return {}


def record(figures: dict[str, dict | tuple], command: str | None = None) -> dict:
    """Merge `figures` into bench/results.json; returns the whole merged object. An entry is a dict (see
    `figure`), or a (value, unit) pair whose command is `command`."""
    results = load()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name, entry in figures.items():
        if isinstance(entry, tuple):
            entry = figure(entry[0], entry[1], command or "make bench")
        results[name] = {"measured_at": stamp, **entry}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def figure(value, unit: str, command: str, **extra) -> dict:
    return {"value": value, "unit": unit, "command": command, **extra}


def missing(unit: str, command: str, reason: str, **extra) -> dict:
    return {"value": None, "unit": unit, "command": command, "missing": reason, **extra}


AT_10K = {"full_build_s", "full_build_peak_rss_mb"}  # targets stated for the 10k images


def verdict(name: str, value, scale: str = "") -> str:
    if name not in TARGETS:
        return ""
    if name in AT_10K and scale.startswith("1k"):
        return "(1k: not comparable)"
    if value is None:
        return "missing"
    op, target, _ = TARGETS[name]
    ok = {"<=": value <= target, "<": value < target, ">=": value >= target}[op]
    return "ok" if ok else "MISSED"


def _fmt(value, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "fraction":
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:,.2f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{value} {unit}"


def table(results: dict, names: list[str] | None = None) -> str:
    """A Markdown table: figure, value, target, verdict, note (or why it is missing)."""
    names = names or sorted(results)
    lines = ["| figure | value | target | | note |", "|---|---|---|---|---|"]
    for name in names:
        entry = results.get(name)
        if entry is None:
            continue
        value = entry.get("value")
        target = TARGETS.get(name, (None, None, ""))[2]
        note = entry.get("missing") or entry.get("note", "")
        scale = entry.get("scale", "")
        lines.append(f"| `{name}` | {_fmt(value, entry.get('unit', ''))}{' (1k)' if scale.startswith('1k') else ''} | "
                     f"{target} | {verdict(name, value, scale)} | "
                     f"{note} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(load()))
