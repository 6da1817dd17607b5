"""Files that appear whole or not at all, and the size of files still being written.

A reader (another run, a re-run after Ctrl-C or kill -9) sees the previous file or the new one,
never a half-written one: the text goes to a temp file of its own in the same folder (so two
writers never share a temp name), which is then renamed over the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_text_atomically(path: Path | str, text: str) -> Path:
    """Write `text` to `path` whole, with the usual permissions (0666 less the umask)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomically(path: Path | str, values: Any, **dumps_options: Any) -> Path:
    """`values` as indented JSON (json.dumps options pass through), written whole."""
    return write_text_atomically(path, json.dumps(values, indent=2, **dumps_options) + "\n")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def total_size(paths: Iterable[Path]) -> int:
    """Bytes of the files `paths` names that exist now: for a progress line over files another
    process is writing and renaming meanwhile."""
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total
