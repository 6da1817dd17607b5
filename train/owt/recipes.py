"""Named presets of pretrain.py's flags: `--recipe NAME` reads recipes/NAME.toml.

nanoGPT keeps its recipes as config/*.py files that overwrite globals; here a recipe is a flat
TOML file, one key per flag (the TrainConfig field name), with comments saying where its values
come from. TOML, not Python: a recipe is data, read without running anything, and tomllib is in
the standard library.

A recipe's settings go in front of the command line, so argparse checks them like typed flags
(types, choices) and a flag given explicitly wins (the last occurrence of a flag counts).
config.json records which recipe was used, the flags it set and those the command line
overrode.

    uv run train/pretrain.py --recipe time_budget --max_time 1h --dry_run
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from owt.cli import UsageError
from owt.config import TrainConfig

RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"
# Actions of one run, not part of a preset (and no recipe inside a recipe).
NOT_IN_RECIPES = frozenset({"recipe", "resume", "overwrite", "dry_run"})
_UNSET = object()


@dataclass(frozen=True)
class Recipe:
    """One recipes/NAME.toml: its settings by flag name, in file order."""

    name: str
    path: Path
    settings: dict[str, Any]

    def argv(self, names: list[str] | None = None) -> list[str]:
        """The settings (or those of `names`) as command-line flags."""
        args: list[str] = []
        for name, value in self.settings.items():
            if names is not None and name not in names:
                continue
            if isinstance(value, bool):  # a switch: on or (the default) off
                args += [f"--{name}"] if value else []
            else:
                args += [f"--{name}", str(value)]
        return args


def available(directory: Path | None = None) -> list[str]:
    """The recipe names in `directory` (default: the repo's recipes/)."""
    return sorted(path.stem for path in (directory or RECIPES_DIR).glob("*.toml"))


def load_recipe(name: str, directory: Path | None = None) -> Recipe:
    """Read recipes/NAME.toml; UsageError (exit 2) naming the problem if it cannot be used."""
    directory = directory or RECIPES_DIR
    path = directory / f"{name}.toml"
    if not path.is_file():
        names = ", ".join(available(directory)) or "none"
        raise UsageError(f"--recipe {name}: there is no {path} (recipes: {names})")
    try:
        settings = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc})") from None
    allowed = {f.name for f in fields(TrainConfig)} - NOT_IN_RECIPES
    unknown = [key for key in settings if key not in allowed]
    if unknown:
        raise UsageError(f"{path}: {', '.join(unknown)}: not a pretrain.py flag a recipe can set")
    return Recipe(name, path, settings)


def parse_with_recipe(
    make_parser: Callable[[], argparse.ArgumentParser], argv: list[str] | None
) -> tuple[argparse.Namespace, dict[str, Any] | None]:
    """Parse `argv` (None: sys.argv) with `make_parser()`'s parser; with `--recipe NAME`, the
    recipe's settings come first so explicit flags win. Returns the arguments and config.json's
    record of the recipe (None without one): name, file, the flags it set, those overridden."""
    import sys

    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    args = make_parser().parse_args(argv)
    if args.recipe is None:
        return args, None
    recipe = load_recipe(args.recipe)
    try:
        make_parser().parse_args(recipe.argv())  # the recipe alone: its own errors
    except UsageError as exc:
        raise UsageError(f"{recipe.path}: {exc}") from None
    given = explicit_flags(make_parser(), argv)
    record = {
        "name": recipe.name,
        "file": os.path.relpath(recipe.path, RECIPES_DIR.parent),
        "set": {k: v for k, v in recipe.settings.items() if k not in given},
        "overridden_by_flags": {k: v for k, v in recipe.settings.items() if k in given},
    }
    return make_parser().parse_args([*recipe.argv(), *argv]), record


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The TrainConfig fields `argv` sets itself (whatever the value, even the default's)."""
    parser.set_defaults(**{f.name: _UNSET for f in fields(TrainConfig)})
    return {name for name, value in vars(parser.parse_args(argv)).items() if value is not _UNSET}


def describe(record: dict[str, Any]) -> str:
    """One line for the log: which recipe, the flags it set, the ones the command line won."""
    set_flags = " ".join(f"--{k} {v}" for k, v in record["set"].items()) or "nothing"
    line = f"recipe {record['name']} ({record['file']}) sets {set_flags}"
    if record["overridden_by_flags"]:
        won = ", ".join(f"--{k}" for k in record["overridden_by_flags"])
        line += f"; your flags override its {won}"
    return line
