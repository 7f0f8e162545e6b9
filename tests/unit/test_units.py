"""Sizes and names as users type them: what is accepted, what is refused, and how it reads back."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtkit.errors import SpecError
from virtkit.units import MAX_SIZE, EiB, GiB, KiB, MiB, TiB, format_size, parse_size, validate_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MiB", 512 * MiB),
        ("2G", 2 * GiB),
        ("2g", 2 * GiB),
        ("1.5GiB", 1536 * MiB),
        ("1048576", 1048576),
        ("10GB", 10 * 10**9),
        ("10gb", 10 * 10**9),
        ("1 KiB", KiB),
        ("0.5K", 512),
        ("512B", 512),
        ("1TiB", TiB),
        ("1EiB", EiB),
        ("  3M  ", 3 * MiB),
    ],
)
def test_accepted_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("-1", "negative"),
        ("-5G", "negative"),
        ("0", "at least"),
        ("0GiB", "at least"),
        ("abc", "expected"),
        ("", "expected"),
        ("1.5", "whole number of bytes"),
        ("1e9", "expected"),
        ("1,5G", "expected"),
        ("\uff11\uff12", "expected"),  # fullwidth digits: int() would take them, we do not
        ("99999999999PiB", "at most"),
        ("2EiB", "at most"),
        ("2 GiB x", "expected"),
        ("nan", "expected"),
        ("inf", "expected"),
        ("5 G B", "expected"),
        ("5GiBB", "expected"),
        ("0x10", "expected"),
        ("1.5.5G", "expected"),
    ],
)
def test_refused_sizes(text: str, reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_size(text, what="memory size")
    assert reason in caught.value.message
    assert "memory size" in caught.value.message


def test_bounds_are_the_callers() -> None:
    assert parse_size("0", minimum=0) == 0
    with pytest.raises(SpecError, match="at least 64MiB"):
        parse_size("32MiB", minimum=64 * MiB)
    with pytest.raises(SpecError, match="at most 16GiB"):
        parse_size("17G", maximum=16 * GiB)
    with pytest.raises(SpecError):
        parse_size(True)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="negative"):
        parse_size(-1)


@given(st.integers(min_value=1, max_value=MAX_SIZE))
def test_bytes_round_trip(value: int) -> None:
    assert parse_size(str(value)) == value


@given(st.integers(min_value=1, max_value=1023), st.sampled_from(["KiB", "MiB", "GiB", "TiB"]))
def test_exact_units_format_and_parse_back(count: int, unit: str) -> None:
    factor = {"KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB}[unit]
    value = count * factor
    rendered = format_size(value)
    assert parse_size(rendered) == value


@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_format_is_within_rounding_of_the_value(value: int) -> None:
    rendered = format_size(value)
    number = rendered.rstrip("BKMGTPEi")
    unit = rendered[len(number) :]
    factor = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB, "PiB": 1024**5, "EiB": EiB}[unit]
    assert 1 <= Fraction(number) < 1024 or unit == "B"
    assert abs(Fraction(number) * factor - value) <= Fraction(factor, 20)


@given(st.text(max_size=30))
def test_garbage_only_ever_raises_spec_error(text: str) -> None:
    try:
        value = parse_size(text)
    except SpecError as error:
        assert error.exit_code == 2
        assert text[:10] in error.message or repr(text)[1:11] in error.message
    else:
        assert 1 <= value <= MAX_SIZE


@pytest.mark.parametrize("name", ["web1", "a", "x-1", "db-primary-2", "a" * 63])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("a" * 64, "longer than 63"),
        ("Web1", "a-z, 0-9"),
        ("1web", "start with a letter"),
        ("-web", "start with a letter"),
        ("web-", "end with '-'"),
        ("we_b", "a-z, 0-9"),
        ("we.b", "a-z, 0-9"),
        ("../etc", "a-z, 0-9"),
        ("web/1", "a-z, 0-9"),
        ("wéb", "a-z, 0-9"),
        ("web\n", "a-z, 0-9"),
        ("web 1", "a-z, 0-9"),
    ],
)
def test_invalid_names(name: str, reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        validate_name(name)
    assert reason in caught.value.message
    assert caught.value.hint


def test_uppercase_name_hint_suggests_lowercase() -> None:
    with pytest.raises(SpecError) as caught:
        validate_name("Web1")
    assert caught.value.hint == "names are lowercase; try 'web1'"


@given(st.text(max_size=80))
def test_accepted_names_are_safe_everywhere(name: str) -> None:
    """Whatever passes can be a hostname, a file name and part of an interface name."""
    try:
        validate_name(name)
    except SpecError:
        return
    assert 1 <= len(name) <= 63
    assert name.isascii() and name[0].isalpha() and not name.endswith("-")
    assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
