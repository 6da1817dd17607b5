"""Which files of a hub dataset repo make its train split, found the way the hub's tools find them.

At one commit, from a recursive listing of the whole repo:

1. `--data_files PATTERN` (repeatable), if given: those globs, relative to the repo root.
2. Else the dataset card's `configs` (README.md front matter, as `datasets` reads it): the
   default config (or `--config_name`), its `train` split's `path` pattern(s).
3. Else `datasets`' default data-files conventions (`data/train-00000-of-00001.parquet`,
   `train/`, `*train*`, ..., then every file), via its own resolution function.

Globs follow fsspec's rules, as `datasets` resolves them against the hub (`*` stays inside one
folder, `**` crosses folders); hidden and `__special__` paths and `datasets`' ignored files
(README.md, dataset_info.json...) never match unless a pattern names them. Only .parquet files
are kept. A revision whose train split holds no parquet (the old loading-script layout of
Skylion007/openwebtext, say) is described in one line that says what to pass instead.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

PARQUET_SUFFIX = ".parquet"
SPLIT = "train"


class DataFilesError(ValueError):
    """The train split cannot be resolved at this revision; the message names what to pass."""


@dataclass(frozen=True)
class SplitFiles:
    """The parquet files of the train split and how they were chosen."""

    paths: tuple[str, ...]  # sorted
    patterns: tuple[str, ...]
    origin: str  # e.g. "config 'plain_text' of the dataset card"

    def describe(self) -> str:
        """e.g. "train split of config 'plain_text' of the dataset card: plain_text/train-*"."""
        return f"{SPLIT} split of {self.origin}: {', '.join(self.patterns)}"


@cache
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    from fsspec.utils import glob_translate

    return re.compile(glob_translate(pattern))


def _hidden(parts: Iterable[str]) -> bool:
    return any(part.startswith((".", "__")) for part in parts)


def _unrequested_hidden(path: str, pattern: str) -> bool:
    """A hidden (.x) or special (__x__) file or folder that the pattern does not name (the rule
    of `datasets.data_files.resolve_pattern`, simplified to 'the pattern names one too')."""
    return _hidden(path.split("/")) and not _hidden(pattern.split("/"))


def match_pattern(pattern: str, paths: Iterable[str]) -> list[str]:
    """The files of `paths` (repo-relative) that `pattern` matches, as `datasets` would."""
    from datasets.data_files import FILES_TO_IGNORE

    ignored = set(FILES_TO_IGNORE) - {pattern.rsplit("/", 1)[-1]}
    regex = _pattern_regex(pattern.lstrip("/"))
    return [
        path
        for path in paths
        if regex.match(path)
        and path.rsplit("/", 1)[-1] not in ignored
        and not _unrequested_hidden(path, pattern)
    ]


def _card_patterns(card_data: Mapping[str, Any], config_name: str | None) -> tuple[list, str]:
    """The train patterns of the card's config `config_name` (default: the card's default)."""
    from datasets.data_files import sanitize_patterns
    from datasets.utils.metadata import MetadataConfigs

    try:
        configs = MetadataConfigs.from_dataset_card_data(card_data)
        name = config_name or configs.get_default_config_name()
    except ValueError as exc:
        raise DataFilesError(f"the dataset card's configs are invalid ({exc})") from None
    names = ", ".join(configs)
    if name is None:
        raise DataFilesError(f"the dataset card has several configs ({names}) and no default")
    if name not in configs:
        raise DataFilesError(f"the dataset card has no config '{name}' (it has: {names})")
    try:
        splits = sanitize_patterns(configs[name].get("data_files") or [])
    except ValueError as exc:
        raise DataFilesError(f"config '{name}' has invalid data_files ({exc})") from None
    if SPLIT not in splits:
        found = ", ".join(splits) or "none"
        raise DataFilesError(f"config '{name}' of the dataset card has no train split ({found})")
    return list(splits[SPLIT]), f"config '{name}' of the dataset card"


def _default_patterns(paths: Sequence[str]) -> list[str]:
    """`datasets`' default data-files conventions applied to `paths`: the train patterns."""
    # Private in datasets but its one definition of the conventions (shared with
    # get_data_patterns), so the hub's layouts are found exactly as load_dataset finds them.
    from datasets.data_files import _get_data_files_patterns

    try:
        patterns = _get_data_files_patterns(lambda pattern: match_pattern(pattern, paths))
    except FileNotFoundError:
        return []
    return list(patterns.get(SPLIT, []))


def resolve_train_files(
    paths: Sequence[str],
    card_data: Mapping[str, Any] | None,
    *,
    config_name: str | None = None,
    data_files: Sequence[str] | None = None,
) -> SplitFiles:
    """Resolve the train split's parquet files among `paths`, the repo's files at one commit.

    Args:
        paths: every file of the revision, repo-relative (a recursive listing).
        card_data: the dataset card's metadata (`DatasetInfo.card_data`), or None.
        config_name: which config of the card (default: the card's default config).
        data_files: glob patterns that override the card and the conventions.

    Returns:
        [`SplitFiles`]; `paths` is empty when nothing matched (see `describe_revision`).

    Raises:
        [`DataFilesError`]: the card's configs cannot say (several without a default, an unknown
            `config_name`, no train split).
    """
    if data_files:
        patterns, origin = list(data_files), "--data_files"
    elif card_data is not None and card_data.get("configs"):
        patterns, origin = _card_patterns(card_data, config_name)
    else:
        if config_name is not None:
            raise DataFilesError(f"--config_name {config_name}: the dataset card has no configs")
        patterns, origin = _default_patterns(paths), "the default data-files conventions"
    matched = {path for pattern in patterns for path in match_pattern(pattern, paths)}
    parquet = sorted(path for path in matched if path.endswith(PARQUET_SUFFIX))
    return SplitFiles(tuple(parquet), tuple(patterns), origin)


def describe_revision(paths: Sequence[str]) -> str:
    """What a revision holds, in a few words: 'a loading script (openwebtext.py), 21 .tar files
    and 2 other files'."""
    scripts = [p for p in paths if "/" not in p and p.endswith(".py")]
    kinds = Counter(
        "." + p.rsplit(".", 1)[-1] if "." in p.rsplit("/", 1)[-1] else "other"
        for p in paths
        if p not in scripts and not p.rsplit("/", 1)[-1].startswith(".") and p != "README.md"
    )
    parts = []
    if scripts:
        names = ", ".join(scripts)
        parts.append(f"a loading script ({names})" if len(scripts) == 1 else f"scripts ({names})")
    for kind, count in kinds.most_common():
        if kind != "other":
            parts.append(f"{count} {kind} file{'s' if count > 1 else ''}")
    if kinds.get("other"):
        parts.append(f"{kinds['other']} other file{'s' if kinds['other'] > 1 else ''}")
    if not parts:
        return "only a README" if "README.md" in paths else "no files"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
