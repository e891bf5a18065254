"""bench/results.json: every benchmark's figures, {name: {"value", "unit", "command"}}, merged across benchmarks."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results.json"


def record(figures: dict[str, tuple[float, str]], command: str, path: Path = RESULTS) -> None:
    """Merge {name: (value, unit)} into the results file, keeping the other benchmarks' figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {}
    for name, (value, unit) in figures.items():
        results[name] = {"value": value, "unit": unit, "command": command}
    path.write_text(json.dumps(dict(sorted(results.items())), indent=2) + "\n")
