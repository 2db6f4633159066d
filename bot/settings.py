"""Every chat setting, defined once.

`ChatSettings` is the table: one frozen dataclass field per setting, typed as the value the
service and the model use, with its spec (kind of value and range, help, aliases, where the
server's default comes from) in the field's metadata. Everything else is derived from it:
storage (one JSON object per chat, bot/storage.py), what a user types (`/settings temperature
1.1`, aliases, reset words), validation messages, the settings help text, Discord's choices and
the merge with the config's defaults. A new setting is one new field here and nothing else.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from common.config import ConfigError
from model.requests import METHODS

if TYPE_CHECKING:  # types only: storage reads this table without loading the catalog's matcher
    from common.catalog import Catalog
    from common.config import Config

RESET_WORDS = ("default", "reset", "unset")  # typed as a value: back to the server's default
SWITCH_WORDS: Mapping[str, bool] = MappingProxyType(
    {"on": True, "yes": True, "true": True, "1": True, "off": False, "no": False, "false": False, "0": False}
)


class BadValue(ValueError):
    """A value a setting does not take; the message says what it takes ("a number from 0.1 to 2")."""


# --- kinds of value ------------------------------------------------------------------------------


class Kind(Protocol):
    """How one kind of setting reads, checks and shows its values."""

    @property
    def values(self) -> str:
        """The values it takes, short, for help lines ("0.1 to 2", "on or off")."""
        ...

    @property
    def expected(self) -> str:
        """The values it takes, as a phrase for error messages ("a number from 0.1 to 2")."""
        ...

    @property
    def suggestions(self) -> tuple[str, ...]:
        """Whole values worth offering as they are (a Discord autocomplete), if any."""
        ...

    @property
    def reset_words(self) -> tuple[str, ...]:
        """Words besides RESET_WORDS that mean the default ("all" templates)."""
        ...

    def parse(self, text: str, catalog: Catalog) -> Any:
        """What a user typed -> the value; BadValue (or the catalog's UnknownTemplate)."""
        ...

    def check(self, value: object) -> Any:
        """A typed value (from code or stored JSON) -> the value in its one type; BadValue."""
        ...

    def show(self, value: Any) -> str: ...


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    @property
    def values(self) -> str:
        *first, last = self.options
        return f"{', '.join(first)} or {last}" if first else last

    @property
    def expected(self) -> str:
        return f"one of {', '.join(self.options)}"

    @property
    def suggestions(self) -> tuple[str, ...]:
        return self.options

    @property
    def reset_words(self) -> tuple[str, ...]:
        return ()

    def parse(self, text: str, catalog: Catalog) -> str:
        return self.check(text.lower())

    def check(self, value: object) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise BadValue(self.expected)
        return value

    def show(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True)
class Number:
    type: type[int] | type[float]
    low: float
    high: float
    unit: str = ""  # "seconds": read after the range in help lines

    @property
    def values(self) -> str:
        return f"{self.low:g} to {self.high:g}" + (f" {self.unit}" if self.unit else "")

    @property
    def expected(self) -> str:
        whole = "whole " if self.type is int else ""
        return f"a {whole}number from {self.low:g} to {self.high:g}"

    @property
    def suggestions(self) -> tuple[str, ...]:
        return ()

    @property
    def reset_words(self) -> tuple[str, ...]:
        return ()

    def parse(self, text: str, catalog: Catalog) -> int | float:
        try:
            value = self.type(text)
        except ValueError:
            raise BadValue(self.expected) from None
        return self.check(value)

    def check(self, value: object) -> int | float:
        # bool is an int to Python, never a number to a person; a float is no whole number.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadValue(self.expected)
        if self.type is int and not isinstance(value, int):
            raise BadValue(self.expected)
        number = self.type(value)
        if math.isnan(number) or not self.low <= number <= self.high:
            raise BadValue(self.expected)
        return number

    def show(self, value: Any) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Switch:
    @property
    def values(self) -> str:
        return "on or off"

    @property
    def expected(self) -> str:
        return "on or off"

    @property
    def suggestions(self) -> tuple[str, ...]:
        return ("on", "off")

    @property
    def reset_words(self) -> tuple[str, ...]:
        return ()

    def parse(self, text: str, catalog: Catalog) -> bool:
        if text.lower() not in SWITCH_WORDS:
            raise BadValue(self.expected)
        return SWITCH_WORDS[text.lower()]

    def check(self, value: object) -> bool:
        if not isinstance(value, bool):
            raise BadValue(self.expected)
        return value

    def show(self, value: Any) -> str:
        return "on" if value else "off"


@dataclass(frozen=True)
class TemplateList:
    """Catalog slugs; None (the default) is every template, () is none."""

    @property
    def values(self) -> str:
        return 'template names separated by commas, or "all"'

    @property
    def expected(self) -> str:
        return self.values

    @property
    def suggestions(self) -> tuple[str, ...]:
        return ()

    @property
    def reset_words(self) -> tuple[str, ...]:
        return ("all",)

    def parse(self, text: str, catalog: Catalog) -> tuple[str, ...]:
        # Commas separate names that may contain spaces ("change my mind, drake"); without
        # commas every word is a name ("drake two-buttons").
        names = text.split(",") if "," in text else text.split()
        slugs: list[str] = []
        for name in (n.strip() for n in names):
            if not name:
                continue
            slug = catalog.lookup(name).slug  # UnknownTemplate names the bad one, with suggestions
            if slug not in slugs:
                slugs.append(slug)
        if not slugs:
            raise BadValue(self.expected)
        return tuple(slugs)

    def check(self, value: object) -> tuple[str, ...]:
        # Not a lone string: "drake" would be five one-letter names.
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise BadValue(self.expected)
        if not all(isinstance(slug, str) and slug for slug in value):
            raise BadValue(self.expected)
        return tuple(value)

    def show(self, value: Any) -> str:
        return "all" if value is None else ", ".join(value) or "none"


# --- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str  # the ChatSettings field, and what users type
    kind: Kind
    help: str  # what it changes, for people
    default: Callable[[Config], Any]  # the server's default: the config, where it has one
    aliases: tuple[str, ...] = ()  # short names people type

    @property
    def summary(self) -> str:
        """One help line: "temperature: higher = wilder captions (0.1 to 2)"."""
        return f"{self.name}: {self.help} ({self.kind.values})"


_SPEC = "setting"


def _setting(kind: Kind, help: str, default: Callable[[Config], Any], aliases: tuple[str, ...] = ()) -> Any:
    # The name is the field's own: filled in by `_table` below.
    return field(metadata={_SPEC: Setting("", kind, help, default, aliases)})


@dataclass(frozen=True)
class ChatSettings:
    """The settings in effect in one chat (or Discord server): its own where it set them, else
    the server's defaults. Each field is one setting, defined here and nowhere else."""

    method: str = _setting(
        Choice(METHODS),
        "how the caption is chosen",
        lambda c: c.generation.method,
    )
    temperature: float = _setting(
        Number(float, 0.1, 2.0), "higher = wilder captions", lambda c: c.generation.temperature, ("temp",)
    )
    beam_width: int = _setting(
        Number(int, 1, 16),
        "captions beam search keeps at each step",
        lambda c: c.generation.beam_width,
        ("beam",),
    )
    max_length: int = _setting(
        Number(int, 10, 200, "characters"),
        "the longest caption the model writes",
        lambda c: c.generation.max_length,
        ("length",),
    )
    filter_enabled: bool = _setting(
        Switch(), "refuse and never write words on the banned list", lambda c: c.filter.enabled, ("filter",)
    )
    allowed_templates: tuple[str, ...] | None = _setting(
        TemplateList(), "the templates memes may use", lambda c: None, ("templates",)
    )
    cooldown_s: float = _setting(
        Number(float, 0, 3600, "seconds"), "the wait between one person's memes", lambda c: 0.0, ("cooldown",)
    )
    chat_rate_per_minute: float = _setting(
        Number(float, 1, 6000, "a minute"),  # up to 100 a second: a busy server's default, a load test's
        "memes the whole chat may make",
        lambda c: c.limits.chat_rate_per_minute,
        ("rate",),
    )
    lexicon: bool = _setting(
        Switch(), "only real words, no made-up ones", lambda c: c.generation.lexicon, ("words",)
    )
    best_of: int = _setting(
        Number(int, 1, 16),
        "captions sampled, the likeliest shown, 🔁 shows the next",
        lambda c: c.generation.best_of,
        ("best",),
    )
    keep_pictures: bool = _setting(
        Switch(),
        "keep the pictures people caption here (otherwise only their hash), so 🔁 works after a restart",
        lambda c: c.storage.keep_pictures,
        ("pictures",),
    )


def _table() -> tuple[Setting, ...]:
    return tuple(
        dataclasses.replace(f.metadata[_SPEC], name=f.name) for f in dataclasses.fields(ChatSettings)
    )


SETTINGS: tuple[Setting, ...] = _table()
# What users may type for each setting: its name and its aliases.
_BY_KEY: Mapping[str, Setting] = MappingProxyType({key: s for s in SETTINGS for key in (s.name, *s.aliases)})


# --- derived ---------------------------------------------------------------------------------------


def find_setting(key: str) -> Setting | None:
    """The setting a user's key means ("temperature", "temp", "Beam-Width"), or None."""
    return _BY_KEY.get(key.strip().lower().replace("-", "_"))


def get_setting(name: str) -> Setting:
    """The setting with this exact field name; KeyError if there is none."""
    found = _BY_KEY.get(name)
    if found is None or found.name != name:
        raise KeyError(f"no setting {name!r} (known: {', '.join(s.name for s in SETTINGS)})")
    return found


def effective(config: Config, overrides: Mapping[str, Any] | None = None) -> ChatSettings:
    """The settings in effect: a chat's `overrides` (checked values; see `check_value`) over the
    config's defaults. Names that are not settings are ignored."""
    values = {s.name: s.default(config) for s in SETTINGS}
    values.update({name: value for name, value in (overrides or {}).items() if name in values})
    return ChatSettings(**values)


def check_config_defaults(config: Config) -> None:
    """Refuse a config whose defaults for chat settings ([generation] method, temperature, ...)
    are values the settings do not take: the ranges live in this table, not in the config's
    own checks (common/ sits below the table). ConfigError names each bad value."""
    problems = []
    for s in SETTINGS:
        value = s.default(config)
        if value is None:
            continue
        try:
            s.kind.check(value)
        except BadValue as exc:
            problems.append(f"the default {s.name} = {value!r}: must be {exc}")
    if problems:
        raise ConfigError("; ".join(problems))


def check_value(name: str, value: object) -> Any:
    """A typed value for setting `name`, in its one type; BadValue (or KeyError for a bad name)."""
    return get_setting(name).kind.check(value)


def parse_value(spec: Setting, text: str, catalog: Catalog) -> Any | None:
    """What a user typed for `spec` -> its value, or None for "back to the default".
    Raises BadValue (empty text included) or the catalog's UnknownTemplate."""
    text = text.strip()
    if not text:
        raise BadValue(spec.kind.expected)
    if text.lower() in RESET_WORDS + spec.kind.reset_words:
        return None
    return spec.kind.parse(text, catalog)


def split_changes(text: str) -> dict[str, str]:
    """What follows a settings command -> {key: value text}: "temperature 0.9" (the rest of the
    line is the value, spaces and all) or "temperature=0.9 method=beam". {} for no key."""
    text = text.strip()
    if "=" in text:
        pairs = (item.partition("=") for item in text.split())
        return {key.strip(): value.strip() for key, _, value in pairs if key.strip()}
    parts = text.split(maxsplit=1)
    return {parts[0]: parts[1].strip() if len(parts) > 1 else ""} if parts else {}


def format_settings(settings: ChatSettings) -> str:
    """Settings as "name: value" lines, for any front end."""
    return "\n".join(f"{s.name}: {s.kind.show(getattr(settings, s.name))}" for s in SETTINGS)


def settings_help() -> str:
    """What each setting does and takes, one line each, with its short names."""
    lines = []
    for s in SETTINGS:
        aliases = f" (or {', '.join(s.aliases)})" if s.aliases else ""
        lines.append(f"{s.name}{aliases}: {s.help} ({s.kind.values})")
    return "\n".join(lines)
