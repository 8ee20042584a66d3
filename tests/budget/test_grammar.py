"""The budget grammar: parsing, error messages, resolution to a per-image target, argparse."""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest

from gfpipe.budget import Budget, format_amount, format_duration, parse_budget
from gfpipe.commands.common import add_budget_arguments

COSTS = [0.76e9, 1.55e9, 2.36e9, 3.17e9, 3.99e9]
SECONDS = [0.005, 0.011, 0.017, 0.023, 0.029]  # cumulative seconds per image per exit step


@pytest.mark.parametrize(
    "text, value",
    [
        ("1.2G", 1.2e9),
        ("850M", 8.5e8),
        ("3.1e9", 3.1e9),
        ("1.2 G", 1.2e9),
        ("1.2GMACs", 1.2e9),
        ("500k", 5e5),
        ("500K", 5e5),
        ("2T", 2e12),
        ("0.5P", 5e14),
        ("1200000000", 1.2e9),
        (".5G", 5e8),
    ],
)
def test_mean_budgets_parse(text, value):
    budget = parse_budget(text)
    assert budget.kind == "mean" and budget.value == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize(
    "text, value",
    [
        ("2h", 7200),
        ("90m", 5400),
        ("45s", 45),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("1d2h", 93600),
        ("1h 30m 15s", 5415),
        ("2H", 7200),
    ],
)
def test_time_budgets_parse(text, value):
    assert parse_budget(text, "time") == Budget("time", value)


@pytest.mark.parametrize(
    "text, kind, message",
    [
        ("1.2g", "mean", "did you mean 1.2G"),
        ("1.2m", "mean", "milli"),
        ("1.2 GB", "mean", "e.g. --budget 1.2G"),
        ("lots", "mean", "expected a number"),
        ("-1G", "mean", "expected a number"),
        ("0", "mean", "positive"),
        ("3.5X", "total", "e.g. --budget-total 3.5P"),
        ("2", "time", "a unit is required"),
        ("30m2h", "time", "largest first"),
        ("2 hours", "time", "e.g. --budget-time 2h"),
        ("0s", "time", "positive"),
    ],
)
def test_parse_errors_say_what_was_wrong_with_examples(text, kind, message):
    with pytest.raises(ValueError, match=message):
        parse_budget(text, kind)


def test_formatting_helpers():
    assert format_amount(1.2e9) == "1.2 GMACs"
    assert format_amount(0.4e9, like=3.99e9) == "0.4 GMACs"
    assert format_amount(0.0125, "s") == "12.5 ms"
    assert format_duration(5400) == "1h30m" and format_duration(45) == "45s"
    assert format_duration(2.5) == "2.5s" and format_duration(93600) == "1d2h"
    assert str(parse_budget("1.2G")) == "--budget 1.2G"
    assert str(parse_budget("3.5P", "total")) == "--budget-total 3.5P"
    assert str(parse_budget("90m", "time")) == "--budget-time 1h30m"


def test_mean_budget_resolves_to_itself():
    resolved = parse_budget("1.2G").resolve(COSTS)
    assert resolved.target == 1.2e9 and not resolved.clamped and resolved.unit == "MACs"
    assert np.array_equal(resolved.costs, COSTS)


def test_total_budget_is_divided_by_the_images():
    resolved = parse_budget("3.5P", "total").resolve(COSTS, num_images=2_000_000)
    assert resolved.target == pytest.approx(1.75e9)
    with pytest.raises(ValueError, match="needs the number of images"):
        parse_budget("3.5P", "total").resolve(COSTS)


def test_time_budget_uses_measured_seconds_and_workers():
    budget = parse_budget("1h", "time")
    resolved = budget.resolve(COSTS, step_seconds=SECONDS, num_images=1_000_000, num_workers=8)
    assert resolved.unit == "s" and np.array_equal(resolved.costs, SECONDS)
    assert resolved.target == pytest.approx(3600 * 8 / 1_000_000)  # 28.8 ms per image
    with pytest.raises(ValueError, match="measured on the device"):
        budget.resolve(COSTS, num_images=10)


def test_budget_above_all_steps_is_clamped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="gfpipe.budget.grammar"):
        resolved = parse_budget("5G").resolve(COSTS)
    assert resolved.clamped and resolved.target == 3.99e9 and resolved.requested == 5e9
    assert "every image runs all 5 steps" in caplog.text
    exact = parse_budget("3.99G").resolve(COSTS)
    assert not exact.clamped and exact.target == 3.99e9


def test_budget_below_glance_names_both_limits_in_the_users_terms():
    with pytest.raises(ValueError) as err:
        parse_budget("0.4G").resolve(COSTS)
    assert str(err.value) == (
        "budget 0.4 GMACs is below the glance-only cost 0.76 GMACs of this model; "
        "the smallest budget is 0.76 GMACs, the largest 3.99 GMACs"
    )
    with pytest.raises(
        ValueError,
        match=r"1000000 images is 0.5 GMACs per image; .*"
        r"--budget-total 760T to 3.99P",
    ):
        parse_budget("500T", "total").resolve(COSTS, num_images=1_000_000)
    with pytest.raises(ValueError, match=r"below the glance-only cost 5 ms.*--budget-time 10m25s to 1h25s"):
        parse_budget("5m", "time").resolve(COSTS, step_seconds=SECONDS, num_images=1_000_000, num_workers=8)


def test_argparse_options_are_mutually_exclusive_and_share_args_budget(capsys):
    parser = argparse.ArgumentParser()
    add_budget_arguments(parser)
    assert parser.parse_args([]).budget is None
    assert parser.parse_args(["--budget", "1.2G"]).budget == Budget("mean", 1.2e9)
    assert parser.parse_args(["--budget-total", "3.5P"]).budget == Budget("total", 3.5e15)
    assert parser.parse_args(["--budget-time", "1h30m"]).budget == Budget("time", 5400.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["--budget", "1G", "--budget-time", "2h"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--budget", "1.2g"])
    assert "did you mean 1.2G" in capsys.readouterr().err
    required = argparse.ArgumentParser()
    add_budget_arguments(required, required=True)
    with pytest.raises(SystemExit):
        required.parse_args([])
