"""The service's typed errors, and how a front end words them.

Every error a user can get is a `MemeError` whose `user_message` is platform-free; where the
advice needs a platform's command syntax or roles, the error carries the data and each front end
words it with its own `Wording` table (`error_text`)."""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from bot.settings import RESET_WORDS, SETTINGS, Setting

if TYPE_CHECKING:
    from common.template import Template

UNEXPECTED = "Something went wrong on my side (error {request_id}). Please try again in a moment."


class MemeError(Exception):
    """A request the bot cannot fulfil. `user_message` is short, friendly, safe to show and
    platform-free: no command syntax, no platform's roles. Where the advice needs those, the
    subclass carries the data and each front end words it (`Wording`)."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class UnknownTemplateError(MemeError):
    def __init__(self, user_message: str, suggestions: list[Template]) -> None:
        super().__init__(user_message)
        self.suggestions = suggestions


class BusyError(MemeError):
    pass


class CooldownError(MemeError):
    def __init__(self, retry_after: float, whole_chat: bool = False) -> None:
        seconds = max(1, math.ceil(retry_after))
        if whole_chat:
            text = f"This chat is making memes faster than I can keep up: try again in {seconds} s."
        else:
            text = f"Slow down a little: you can make another meme in {seconds} s."
        super().__init__(text)
        self.retry_after = retry_after


class NotAllowedError(MemeError):
    """Refused by this chat's settings or the asker's role; a front end names who can change
    that on its platform (a Telegram group's admins, Discord's Manage Server)."""


class AdminOnlyError(NotAllowedError):
    """Changing the chat's settings is for its admins, and the asker is not one."""

    def __init__(self) -> None:
        super().__init__("Only this chat's admins can change its settings.")


class TemplateNotEnabledError(NotAllowedError):
    """The chat's allowed_templates setting leaves this template out."""

    def __init__(self, template: Template) -> None:
        super().__init__(f"{template.name} isn't enabled in this chat.")
        self.template = template


class NoTemplatesEnabledError(NotAllowedError):
    """The chat's allowed_templates setting is empty: no template to pick at random."""

    def __init__(self) -> None:
        super().__init__("No templates are enabled in this chat; an admin can change that in the settings.")


class BadInputError(MemeError):
    pass


class BadPictureError(BadInputError):
    """A picture that cannot be a meme (not an image, too big, corrupt); the message says what to send."""


class MissingCaptionError(BadInputError):
    """A hand-written caption with no text in it."""

    def __init__(self) -> None:
        super().__init__("Give me some text for the caption, boxes separated by |.")


class MissingTemplateError(BadInputError):
    """A hand-written caption that names no template."""

    def __init__(self) -> None:
        super().__init__("Which template? Name one for the caption.")


class BoxCountError(BadInputError):
    """More box texts than the template has boxes."""

    def __init__(self, template: Template, given: int, message: str) -> None:
        super().__init__(message)
        self.template = template
        self.given = given


class BannedWordError(BadInputError):
    """The user's own text has a word the chat's filter bans; `hidden` shows its first letter."""

    def __init__(self, what: str, hidden: str) -> None:
        super().__init__(
            f'{what} has a word I don\'t write ("{hidden}"). Try other words, '
            "or ask an admin to switch the filter off for this chat."
        )
        self.what = what
        self.hidden = hidden


class SettingsUsageError(BadInputError):
    """A settings change that names no setting."""

    def __init__(self) -> None:
        super().__init__(f"Name a setting and a value, e.g. temperature 0.9 (or {RESET_WORDS[0]}).")


class UnknownSettingError(BadInputError):
    def __init__(self, key: str) -> None:
        known = ", ".join(s.name for s in SETTINGS)
        super().__init__(f'There is no setting "{key[:40]}". Settings: {known}.')
        self.key = key


class BadSettingError(BadInputError):
    """A value a setting does not take (`given` "" when none was given)."""

    def __init__(self, setting: Setting, given: str) -> None:
        if given:
            text = f"{setting.name} must be {setting.kind.expected} (got {given[:40]!r})."
        else:
            text = f"Give {setting.name} a value: {setting.kind.values}, or {RESET_WORDS[0]}."
        super().__init__(text)
        self.setting = setting
        self.given = given


class UnknownMemeError(MemeError):
    def __init__(self, meme_id: int) -> None:
        super().__init__("That meme is gone from my memory, so I can't do that. Make a new one!")
        self.meme_id = meme_id


class BadPeriodError(BadInputError):
    """A leaderboard period that is none of the service's PERIODS (`names`)."""

    def __init__(self, given: str, names: tuple[str, ...]) -> None:
        names_text = ", ".join(names[:-1]) + f" or {names[-1]}"
        super().__init__(f'There\'s no leaderboard for "{given[:40]}": pick {names_text}.')
        self.given = given


class MemeNumberError(BadInputError):
    """Which meme? Nothing, or not a meme number, was given (`given` is what was typed)."""

    def __init__(self, given: str) -> None:
        if given:
            text = f"\"{given[:40]}\" isn't a meme number: your memes' numbers are in your history."
        else:
            text = "Which meme? Give its number from your history."
        super().__init__(text)
        self.given = given


class NoSuchMemeError(BadInputError):
    """A meme number that names no meme on this platform."""

    def __init__(self, meme_id: int) -> None:
        super().__init__(f"There's no meme #{meme_id}. Your memes' numbers are in your history.")
        self.meme_id = meme_id


class NotAMemeMessageError(BadInputError):
    """The message a command points at is not one of the bot's memes (or one it no longer has)."""

    def __init__(self) -> None:
        super().__init__("That message isn't one of my memes, or it's one I no longer have.")


class NotYourMemeError(MemeError):
    """Only a meme's author may forget it."""

    def __init__(self, meme_id: int) -> None:
        super().__init__(f"Meme #{meme_id} isn't yours: only the person who made it can forget it.")
        self.meme_id = meme_id


class NoModelError(MemeError):
    """No caption model is loaded: only hand-written captions work."""

    def __init__(self) -> None:
        super().__init__(
            "The caption model isn't installed yet, so I can't write captions. "
            "You can still put your own text on a template."
        )


class PictureGoneError(BadInputError):
    """🔁 on a meme made on a picture this process no longer holds and the chat did not keep."""

    def __init__(self) -> None:
        super().__init__(
            "I no longer have the picture of that meme (this chat doesn't keep pictures): send it again."
        )


class GenerationError(MemeError):
    """The model failed on this request (not the user's fault; trying again may work)."""


def new_request_id() -> str:
    """A short id that ties a user's error reply to its log line."""
    return secrets.token_hex(4)


# How a front end words the errors whose advice names its commands or roles: error class ->
# wording. A class without an entry (nor a base class with one) shows its `user_message`.
Wording = Mapping[type[MemeError], Callable[[Any], str]]


def error_text(error: MemeError, wording: Wording) -> str:
    """`error` as a front end words it: the entry for its class, or the nearest base class's."""
    for cls in type(error).__mro__:
        if cls in wording:
            return wording[cls](error)
    return error.user_message


def caption_hints(example: str, command: str = "/caption") -> Wording:
    """The errors whose advice is how to write a caption by hand, around a front end's own example
    of its caption command (each platform spells the command and its options its own way)."""
    return {
        NoModelError: lambda e: (
            "The caption model isn't installed yet, so I can't write captions. "
            f"You can still write your own with {command}, e.g. {example}"
        ),
        MissingCaptionError: lambda e: f"Give me some text, e.g. {example}",
        MissingTemplateError: lambda e: f"Which template? e.g. {example}",
    }


def report_unexpected(logger: logging.Logger, what: str, error: BaseException | None) -> str:
    """Log an unexpected failure with a fresh request id; returns the reply for the user."""
    request_id = new_request_id()
    logger.error("%s failed (request %s)", what, request_id, exc_info=error)
    return UNEXPECTED.format(request_id=request_id)
