"""The front every script in train/ shares: one error type, one-line messages, exit statuses.

    def main(argv: list[str] | None = None) -> int | None: ...
    if __name__ == "__main__":
        run_main(main)

A failure the user can act on is a `ScriptError` (exit status 1: the hub, the network or
training failed; re-running may help) or a `UsageError` (exit status 2: bad input or settings;
fix them first). `run_main` prints it as one line, `prog: error: message`, the way argparse
reports a bad flag, and never a traceback. Ctrl-C is exit status 130 with a line saying what
was kept. A full disk is a UsageError wherever it happens. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ScriptError(Exception):
    """A failure a script reports in one line; `exit_code` 1 unless given."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(ScriptError):
    """Bad input or settings, reported before anything is written (exit status 2)."""

    exit_code = EXIT_USAGE


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see --help)")


def no_space_left(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is a full disk (ENOSPC)."""
    while exc is not None:
        if getattr(exc, "errno", None) == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run_main(
    main: Callable[[list[str] | None], int | None],
    *,
    interrupted: str = "nothing half-written is used: re-run the same command to continue",
) -> NoReturn:
    """Run a script's `main` and exit with its status, turning ScriptError, Ctrl-C and a full
    disk into one line each. `interrupted` says what a Ctrl-C left and how to go on."""
    prog = Path(sys.argv[0]).name
    try:
        code = main(None) or 0
    except ScriptError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; {interrupted}.", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except OSError as exc:
        if not no_space_left(exc):
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"{prog}: error: no space left on the device{where}; nothing partial was kept: "
            "free some space and run the same command again",
            file=sys.stderr,
        )
        code = EXIT_USAGE
    sys.exit(code)
