"""What the meme service takes and gives back: plain data, the same for every front end.

`MemeService` (bot/service.py) works on these; the Telegram, Discord and console front ends
build the questions (`ChatContext`, `MemeOptions`, `Picture`) from their platform's events and
turn the answers (`MadeMeme`, `MemeDraft`, `Leaderboard`, ...) into messages. Nothing here
knows a platform, or does any work beyond reading what a user typed (`find_period`,
`meme_number`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from bot.errors import BadPeriodError, MemeNumberError
from bot.render import RenderedMeme
from bot.storage import Score, StoredMeme
from common.template import Template

HANDWRITTEN = "caption"  # the method (and model id) stored for a hand-written caption
MAX_MEME_ID = 2**63 - 1  # SQLite's largest integer: a bigger id from a button is forged


@dataclass(frozen=True)
class ChatContext:
    """Who asks, and where. Ids are the platform's own, as strings."""

    platform: str
    chat_id: str
    user_id: str
    is_admin: bool = False  # may change this chat's settings (the adapter checks the platform)
    is_private: bool = False
    scope_id: str = ""  # whose settings apply (e.g. a Discord server); "" = the chat's own
    rate_limited: bool = True  # False for the operator's own console: no flood to guard against
    user_name: str = ""  # the asker's display name as the platform shows it (kept with their memes)


@dataclass(frozen=True)
class MemeOptions:
    """Per-request overrides of the chat's settings; None = use the setting."""

    method: str | None = None
    temperature: float | None = None
    beam_width: int | None = None
    max_length: int | None = None
    uppercase: bool | None = None


@dataclass(frozen=True)
class MadeMeme:
    id: int
    template: Template
    boxes: list[str]
    image: RenderedMeme
    score: Score
    prefix: str
    found: Found | None = None  # how the template was found, when the user did not name it

    @property
    def text(self) -> str:
        """The caption on one line, boxes separated by " | " (for captions and alt text)."""
        return " | ".join(box for box in self.boxes if box.strip())


class Recognition(Protocol):
    @property
    def template(self) -> Template: ...


class Recognizer(Protocol):
    """Tells which catalog template a picture shows, if any (bot/recognize.py)."""

    def recognize(self, image: Image.Image) -> Recognition | None: ...


@dataclass(frozen=True)
class Found:
    """A template the user did not name: recognised in their picture, or picked for their text."""

    how: str  # "recognized" | "picked"
    alternatives: tuple[Template, ...] = ()  # for "picked": the next best, to offer


@dataclass(frozen=True)
class Picture:
    """A picture a user sent, to make a meme on: what a front end hands the service."""

    data: bytes
    name: str = "Your picture"


@dataclass(frozen=True)
class MemeDraft:
    """A meme made but not kept: one of several a user chooses from (Telegram's inline mode).
    Everything `MemeService.keep` needs to store it like any meme, and nothing heavy: the
    rendered image is not part of it, so a front end can hold many for a while."""

    template: Template
    boxes: tuple[str, ...]
    prefix: str
    method: str  # a decoding method, or HANDWRITTEN for the user's own words
    params: Mapping[str, Any]
    model_id: str
    found: Found | None = None

    @property
    def text(self) -> str:
        return " | ".join(box for box in self.boxes if box.strip())


@dataclass(frozen=True)
class Candidate:
    draft: MemeDraft
    image: RenderedMeme


@dataclass(frozen=True)
class Period:
    """How far back a leaderboard looks, by when the memes were made."""

    name: str  # what users type (and Discord's choice value)
    days: int | None  # None: all time
    label: str  # "the last 7 days", for replies
    aliases: tuple[str, ...] = ()


PERIODS: tuple[Period, ...] = (
    Period("week", 7, "the last 7 days", ("w", "7d", "weekly", "7")),
    Period("month", 30, "the last 30 days", ("m", "30d", "monthly", "30")),
    Period("all", None, "all time", ("ever", "alltime", "all-time", "forever", "always")),
)


@dataclass(frozen=True)
class LeaderboardEntry:
    rank: int  # 1-based; memes with the same score and up-votes share a rank
    meme: StoredMeme
    # The platform's id of the chat its message is in, where known: the scope's own chat in a
    # private chat (stored hashed), a group's or a channel's id otherwise.
    chat_id: str | None

    @property
    def author(self) -> str:
        """The author's display name when the meme was made; "" when not kept (older memes,
        private chats)."""
        return self.meme.author_name

    @property
    def text(self) -> str:
        return " | ".join(box for box in self.meme.boxes if box.strip())


@dataclass(frozen=True)
class Leaderboard:
    period: Period
    entries: tuple[LeaderboardEntry, ...]  # best first


@dataclass(frozen=True)
class ForgottenMeme:
    """A meme its author had deleted: where its message is, so a front end can take it down too."""

    id: int
    chat_id: str | None  # the platform's chat id, where known (see LeaderboardEntry)
    message_id: str | None


def find_period(text: str) -> Period:
    """The leaderboard period a user typed (a name or an alias, any case); "" is the first one."""
    word = text.strip().lower()
    if not word:
        return PERIODS[0]
    for period in PERIODS:
        if word == period.name or word in period.aliases:
            return period
    raise BadPeriodError(text.strip(), tuple(p.name for p in PERIODS))


def meme_number(text: str) -> int:
    """The meme id a user typed ("12" or "#12"); MemeNumberError for anything else."""
    word = text.strip().removeprefix("#")
    if not (word.isascii() and word.isdigit()) or not 0 < int(word) <= MAX_MEME_ID:
        raise MemeNumberError(text.strip())
    return int(word)
