"""Per-sample results as JSON lines: appended as each finishes, read back to resume and to summarise.

Each process of a run appends to its own file ``predictions.part<rank>.jsonl`` in the output folder (one line per
(task, sample, method, budget), written, flushed and fsynced before the next sample starts), so a killed run
loses at most the sample in flight. A line cut short by a kill is dropped when the file is reopened. At the end
the parts are merged into ``predictions.jsonl`` in a fixed order, so the merged file does not depend on how many
processes ran.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hieravid.files import write_whole

__all__ = ["PredictionLog", "part_files", "read_records", "record_key", "write_json", "write_jsonl"]

PART_GLOB = "predictions.part*.jsonl"
MERGED = "predictions.jsonl"


def budget_key(budget: float) -> str:
    """The budget as it appears in keys and file names (``0.3``, ``1``): 12 significant digits, so budgets
    that differ are not confused."""
    return f"{float(budget):.12g}"


def record_key(record: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """(task, sample id, method, budget) identifying a record."""
    return (str(record["task"]), str(record["id"]), str(record["method"]), budget_key(record["budget"]))


def part_files(out: Path) -> list[Path]:
    """Every process's part file in ``out``, in rank order."""
    return sorted(Path(out).glob(PART_GLOB))


def read_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """All complete records of ``paths``, in file order; lines that are not a whole JSON object (cut by a kill)
    are skipped."""
    records = []
    for path in paths:
        if not Path(path).is_file():
            continue
        with open(path, "rb") as f:  # bytes: a kill can cut a line inside a character
            for line in f:
                if not line.endswith(b"\n"):
                    continue
                try:
                    record = json.loads(line.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
                if isinstance(record, dict) and all(k in record for k in ("task", "id", "method", "budget")):
                    records.append(record)
    return records


class PredictionLog:
    """Append-only JSONL file of one process. Opening it drops an unfinished last line (left by a kill)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _drop_partial_line(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line and make it durable (flush + fsync) before returning."""
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_partial_line(path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)


def write_json(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented JSON to ``path``, whole or not at all (see :func:`hieravid.files.write_whole`)."""
    write_whole(path, [json.dumps(value, indent=1) + "\n"])


def write_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Write ``records`` to ``path``, one JSON object per line, whole or not at all."""
    write_whole(path, (json.dumps(record, ensure_ascii=False) + "\n" for record in records))
