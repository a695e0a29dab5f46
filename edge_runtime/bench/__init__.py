"""Benchmarks (``hffm bench ...``): figures printed and saved, settings compared side by side in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console


def save_report(out: dict[str, Any], report: Path | None, console: Console) -> None:
    """Write a benchmark's JSON report to ``report`` (creating its folder) and say where; nothing if ``None``."""
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(out, indent=2))
        console.print(f"report: {report}")
