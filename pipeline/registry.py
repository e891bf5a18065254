"""Append-only ID registries committed to git: a key (content hash, source lesion key) -> a stable ID.

An entry is never changed or removed: an image keeps its ID, and a rebuild never renumbers. New keys get the
next free number after the highest ID with the same prefix, in sorted key order so that the same inputs always
get the same IDs. Official IDs (the public release) are recorded as they are.
"""
from __future__ import annotations

import re
from pathlib import Path

from .common import PipelineError, read_csv, write_csv

COLUMNS = ("key", "id")


class Registry:
    def __init__(self, path: Path, prefix: str, start: int, digits: int = 7):
        self.path = Path(path)
        self.prefix, self.start, self.digits = prefix, start, digits
        self.ids: dict[str, str] = {}
        self.owners: dict[str, str] = {}
        if self.path.exists():
            for number, row in enumerate(read_csv(self.path, COLUMNS), start=2):
                if row["key"] in self.ids or row["id"] in self.owners:
                    raise PipelineError(f"{self.path} row {number}: key or id listed twice ({row['key']}, {row['id']})")
                self.ids[row["key"]] = row["id"]
                self.owners[row["id"]] = row["key"]
        self.added: list[str] = []

    def _next_number(self) -> int:
        pattern = re.compile(rf"^{re.escape(self.prefix)}(\d+)$")
        numbers = [int(m.group(1)) for m in map(pattern.match, self.owners) if m]
        return max([self.start - 1, *numbers]) + 1

    def record_official(self, key: str, official_id: str) -> str:
        """Register an ID the source already gives; it must not belong to another key."""
        if key in self.ids:
            if self.ids[key] != official_id:
                raise PipelineError(f"{self.path}: {key} already has ID {self.ids[key]}, source now says {official_id}")
            return official_id
        if official_id in self.owners:
            raise PipelineError(f"{self.path}: official ID {official_id} already belongs to {self.owners[official_id]}")
        self.ids[key], self.owners[official_id] = official_id, key
        self.added.append(key)
        return official_id

    def assign(self, keys) -> None:
        """Give every key without an ID the next ID, in sorted order."""
        number = self._next_number()
        for key in sorted(set(keys) - set(self.ids)):
            new_id = f"{self.prefix}{number:0{self.digits}d}"
            self.ids[key], self.owners[new_id] = new_id, key
            self.added.append(key)
            number += 1

    def save(self) -> None:
        # Existing rows keep their order; new ones are appended.
        write_csv(self.path, ({"key": key, "id": value} for key, value in self.ids.items()), COLUMNS)
