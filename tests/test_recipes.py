"""--recipe NAME: presets of pretrain.py's flags in recipes/*.toml, explicit flags win.

In-process and fast; the recipe through pretrain.py itself (the --dry_run line, config.json's
record, a full run) is in test_budget_runs.py."""

from __future__ import annotations

import pytest

from owt.cli import UsageError
from owt.config import TrainConfig, build_parser
from owt.recipes import available, describe, load_recipe, parse_with_recipe


def parse(*argv: str):
    return parse_with_recipe(build_parser, list(argv))


def test_every_recipe_in_the_repo_loads_and_makes_a_valid_config():
    assert "time_budget" in available()
    for name in available():
        args, record = parse("--recipe", name)
        config = TrainConfig.from_args(args).validate()
        for flag, value in load_recipe(name).settings.items():
            assert getattr(config, flag) == value, flag
        assert record["set"] == load_recipe(name).settings


def test_explicit_flags_win_over_the_recipe_and_the_record_says_which():
    args, record = parse("--recipe", "time_budget", "--learning_rate", "2e-3", "--max_time", "1h")
    assert args.learning_rate == 2e-3  # the flag, not the recipe's 3e-3
    assert (args.optimizer, args.lr_schedule, args.max_time) == ("muon", "wsd", 3600.0)
    assert record["name"] == "time_budget" and record["file"] == "recipes/time_budget.toml"
    assert record["overridden_by_flags"] == {"learning_rate": 3e-3}
    assert "learning_rate" not in record["set"] and record["set"]["optimizer"] == "muon"
    line = describe(record)
    assert "--optimizer muon" in line and "override its --learning_rate" in line
    # A flag given with the recipe's own value still counts as the command line's.
    _, record = parse("--recipe", "time_budget", "--optimizer", "muon")
    assert "optimizer" in record["overridden_by_flags"]


def test_without_a_recipe_nothing_changes():
    args, record = parse()
    assert record is None and args.optimizer == "adamw" and args.recipe is None


def test_bad_recipes_are_one_line_usage_errors(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="time_budget"):  # names the recipes there are
        parse("--recipe", "no_such_recipe")
    (tmp_path / "typo.toml").write_text('optimiser = "muon"\n')
    (tmp_path / "choice.toml").write_text('optimizer = "sgd"\n')
    (tmp_path / "nested.toml").write_text('recipe = "typo"\n')
    monkeypatch.setattr("owt.recipes.RECIPES_DIR", tmp_path)
    with pytest.raises(UsageError, match="optimiser: not a pretrain.py flag"):
        parse("--recipe", "typo")
    with pytest.raises(UsageError, match=r"choice.toml: .*invalid choice: 'sgd'"):
        parse("--recipe", "choice")
    with pytest.raises(UsageError, match="recipe: not a pretrain.py flag"):
        parse("--recipe", "nested")
