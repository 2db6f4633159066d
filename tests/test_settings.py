"""The chat settings table (bot/settings.py): what is derived from it, and that nothing a user
types for a setting gets past it or crashes it. The service, storage and each front end's use
of it are tested with them (test_service, test_storage, test_telegram, test_discord, test_console)."""

from __future__ import annotations

import dataclasses
from functools import cache

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.settings import (
    RESET_WORDS,
    SETTINGS,
    BadValue,
    ChatSettings,
    Choice,
    effective,
    find_setting,
    format_settings,
    get_setting,
    parse_value,
    split_changes,
)
from common.catalog import Catalog, UnknownTemplate, load_catalog
from common.config import Config
from model.requests import METHODS


@cache
def catalog() -> Catalog:
    return load_catalog(Config().catalog_path)


def test_one_field_per_setting_each_with_its_spec():
    assert [s.name for s in SETTINGS] == [f.name for f in dataclasses.fields(ChatSettings)]
    keys = [key for s in SETTINGS for key in (s.name, *s.aliases)]
    assert len(keys) == len(set(keys)), "a name or alias means two settings"
    for s in SETTINGS:
        assert s.help and s.kind.values and s.kind.expected
        assert find_setting(s.name) is s and get_setting(s.name) is s
        assert all(find_setting(alias) is s for alias in s.aliases)
    assert find_setting(" Beam-Width ") is get_setting("beam_width")
    assert find_setting("colour") is None
    with pytest.raises(KeyError):
        get_setting("temp")  # an alias is for people; code uses the name


def test_the_method_setting_offers_exactly_the_decoding_methods():
    kind = get_setting("method").kind
    assert isinstance(kind, Choice) and kind.options == METHODS


def test_defaults_come_from_the_config_and_are_values_the_settings_take():
    config = Config()
    config.generation.temperature = 1.3
    config.limits.chat_rate_per_minute = 12.0
    config.filter.enabled = False
    settings = effective(config)
    assert (settings.temperature, settings.chat_rate_per_minute, settings.filter_enabled) == (
        1.3,
        12.0,
        False,
    )
    assert settings.allowed_templates is None and settings.cooldown_s == 0.0
    for s in SETTINGS:
        default = getattr(effective(Config()), s.name)
        if default is not None:
            assert s.kind.check(default) == default, s.name
    # A chat's own values win; names that are not settings are ignored.
    assert effective(config, {"temperature": 0.4, "colour": "red"}).temperature == 0.4


def test_what_settings_show_can_be_typed_back():
    settings = effective(Config(), {"allowed_templates": ("drake-hotline-bling", "two-buttons")})
    for line in format_settings(settings).splitlines():
        name, _, shown = line.partition(": ")
        spec = get_setting(name)
        value = parse_value(spec, shown, catalog())
        assert value == getattr(settings, name) or (value is None and shown == "all"), line


def test_reset_words_and_all_mean_the_default():
    for word in (*RESET_WORDS, "DEFAULT"):
        assert parse_value(get_setting("temperature"), word, catalog()) is None
    assert parse_value(get_setting("allowed_templates"), "All", catalog()) is None
    with pytest.raises(BadValue):
        parse_value(get_setting("method"), "all", catalog())


@pytest.mark.parametrize(
    ("name", "typed", "expected"),
    [
        ("method", "BEAM", "beam"),
        ("temperature", "1.1", 1.1),
        ("beam_width", "4", 4),
        ("cooldown_s", "30", 30.0),
        ("filter_enabled", "Off", False),
        ("lexicon", "yes", True),
        ("allowed_templates", "change my mind, drake", ("change-my-mind", "drake-hotline-bling")),
        ("allowed_templates", "drake two-buttons drake", ("drake-hotline-bling", "two-buttons")),
    ],
)
def test_typed_values_become_the_settings_types(name: str, typed: str, expected: object):
    value = parse_value(get_setting(name), typed, catalog())
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("name", "typed"),
    [
        ("temperature", "nan"),
        ("temperature", "inf"),
        ("temperature", "2.5"),
        ("beam_width", "2.5"),
        ("beam_width", "0"),
        ("method", "telepathy"),
        ("filter_enabled", "maybe"),
        ("allowed_templates", " , "),
        ("best_of", ""),
    ],
)
def test_values_a_setting_does_not_take_say_what_it_takes(name: str, typed: str):
    spec = get_setting(name)
    with pytest.raises(BadValue, match=spec.kind.expected.split()[0]):
        parse_value(spec, typed, catalog())


def test_typed_values_from_code_are_checked_too():
    number = get_setting("best_of").kind
    for wrong in (True, 2.0, "3", None, 17):
        with pytest.raises(BadValue):
            number.check(wrong)
    assert get_setting("cooldown_s").kind.check(5) == 5.0  # an int is a fine float
    with pytest.raises(BadValue):
        get_setting("allowed_templates").kind.check("drake")  # not five one-letter names


def test_split_changes_reads_both_forms():
    assert split_changes("temperature 0.9") == {"temperature": "0.9"}
    assert split_changes("templates change my mind, drake") == {"templates": "change my mind, drake"}
    assert split_changes("method=beam  beam_width=4") == {"method": "beam", "beam_width": "4"}
    assert split_changes("cooldown") == {"cooldown": ""}
    assert split_changes("") == {} and split_changes("=") == {} and split_changes(" \t ") == {}


@given(key=st.text(max_size=30), text=st.text(max_size=60))
def test_nothing_typed_for_a_setting_gets_past_the_table_or_crashes_it(key: str, text: str):
    spec = find_setting(key) or SETTINGS[len(key) % len(SETTINGS)]
    try:
        value = parse_value(spec, text, catalog())
    except (BadValue, UnknownTemplate):
        return
    assert value is None or spec.kind.check(value) == value
