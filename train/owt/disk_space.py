"""Disk space and byte counts as the scripts print them.

No hub code here: the offline scripts (prepare_subset.py) import it too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from owt.cli import UsageError


def format_bytes(n: float) -> str:
    """`n` bytes in decimal units, as disk vendors and the hub count them: "1.5 GB"."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise UsageError (exit status 2) if the filesystem of `folder` has less than `needed`
    bytes free; `what` names what needs them."""
    probe = Path(folder)
    while not probe.exists():  # the output folder may not exist yet: ask its parent's disk
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise UsageError(
            f"Not enough disk space in {probe}: {what} need about {format_bytes(needed)}, "
            f"{format_bytes(free)} free. Free up {format_bytes(needed - free)} or choose "
            "another --output_dir."
        )
