"""Benchmarks (``hffm bench ...``): figures printed and saved, settings compared side by side in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from hffm_core.errors import HffmError


def save_report(out: dict[str, Any], report: Path | None, console: Console) -> None:
    """Write a benchmark's JSON report to ``report`` (creating its folder) and say where; nothing if ``None``."""
    if report:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(out, indent=2))
        console.print(f"report: {report}")


def fail_if(problems: list[str], what: str, console: Console) -> None:
    """End a benchmark whose measurement did not happen: print each problem and raise one error naming them all.
    Call it after :func:`save_report`, so that the figures that were measured stay on disk.

    Raises:
        HffmError: ``problems`` is not empty.
    """
    if not problems:
        return
    for problem in problems:
        console.print(f"[bold red]FAILED[/]: {problem}")
    raise HffmError(f"{what} FAILED: " + "; ".join(problems))
