"""`memebot chat`: the bot in a terminal, on the same MemeService as the chat platforms.

Type the same commands as on Telegram; each meme's caption is printed and its image is
written to the output folder. Reads stdin line by line, so it also runs from a pipe:

    printf '/meme drake\\n/quit\\n' | memebot chat
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from bot.errors import (
    BadPeriodError,
    BadPictureError,
    BannedWordError,
    MemeError,
    MemeNumberError,
    NoSuchMemeError,
    NoTemplatesEnabledError,
    SettingsUsageError,
    TemplateNotEnabledError,
    UnknownTemplateError,
    Wording,
    caption_hints,
    error_text,
)
from bot.memes import ChatContext, MadeMeme, Picture, meme_number
from bot.render import missing_note
from bot.service import MemeService
from bot.settings import RESET_WORDS, format_settings, settings_help, split_changes
from common.template import MAX_UPLOAD_BYTES, too_big

PLATFORM = "console"
VOTES = {"👍": 1, "+": 1, "+1": 1, "up": 1, "👎": -1, "-": -1, "-1": -1, "down": -1}

HELP = """Commands:
  /meme [template] [start of caption]   e.g. /meme change-my-mind pineapple on
  /caption template text | more text     your own text, box by box
  /meme PICTURE.jpg [start of caption]   your own picture (a file) instead of a template; /caption too
  /rate 👍 | /rate 👎                     rate the last meme (also + or -)
  /reroll                                another meme like the last one
  /templates [words]                     list or search templates
  /history                               your last memes, with their numbers
  /top [week|month|all]                  the best memes here (👍 minus 👎)
  /forget [NUMBER]                       delete one of your memes (default: the last one)
  /settings [name value]                 show or change settings (/settings help: what they do)
  /help, /quit"""

EXAMPLE_CAPTION = "/caption drake no thanks | yes please"
# Errors whose advice names a command, in this console's words (its commands are Telegram's).
# The console's user owns its settings: no one else to ask.
WORDING: Wording = {
    **caption_hints(EXAMPLE_CAPTION),
    UnknownTemplateError: lambda e: f"{e.user_message}\nSee them all with /templates",
    TemplateNotEnabledError: lambda e: (
        f"{e.template.name} isn't enabled here. Choose the templates with /settings templates NAMES, "
        "or allow them all with /settings templates all"
    ),
    NoTemplatesEnabledError: lambda e: (
        "No templates are enabled here. Allow them all with /settings templates all"
    ),
    BannedWordError: lambda e: (
        f'{e.what} has a word I don\'t write ("{e.hidden}"). Try other words, '
        "or switch the filter off with /settings filter off"
    ),
    SettingsUsageError: lambda e: (
        f"Name a setting and a value, e.g. /settings temperature 0.9 (or: {RESET_WORDS[0]})"
    ),
    BadPeriodError: lambda e: f'There\'s no "/top {e.given[:40]}": try /top week, /top month or /top all',
    MemeNumberError: lambda e: (
        f'"{e.given[:40]}" isn\'t a meme number: try /forget 12 (numbers are in /history)'
    ),
    NoSuchMemeError: lambda e: f"There's no meme #{e.meme_id}. /history lists yours with their numbers.",
}


class ConsoleFrontEnd:
    """A read-eval-print loop over text streams (the terminal, a pipe, or a test's buffers)."""

    def __init__(
        self, service: MemeService, output_dir: Path, *, stdin: TextIO, stdout: TextIO, user: str = "local"
    ) -> None:
        self.service = service
        self.output_dir = output_dir
        self.stdin = stdin
        self.stdout = stdout
        # The console is the operator's own: admin of its settings, and never rate limited.
        self.ctx = ChatContext(
            platform=PLATFORM,
            chat_id=PLATFORM,
            user_id=user,
            is_admin=True,
            is_private=True,
            rate_limited=False,
        )
        self.last: MadeMeme | None = None
        self.commands: dict[str, Callable[[str], Awaitable[None]]] = {
            "meme": self.meme,
            "caption": self.caption,
            "rate": self.rate,
            "reroll": self.reroll,
            "templates": self.templates,
            "history": self.history,
            "top": self.top,
            "forget": self.forget,
            "settings": self.settings,
            "help": self.help,
            "start": self.help,
        }

    def say(self, text: str) -> None:
        print(text, file=self.stdout, flush=True)

    async def run(self) -> None:
        """Serve commands until /quit or the end of input."""
        interactive = self.stdin.isatty()
        if interactive:
            self.say('memebot chat: type /help for commands, /quit to leave. Try "/meme change-my-mind".')
        while True:
            if interactive:
                print("> ", end="", file=self.stdout, flush=True)
            # Read in a thread: the model pool and the database live on this event loop.
            line = await asyncio.to_thread(self.stdin.readline)
            if not line or not await self.handle(line.strip()):
                return

    async def handle(self, line: str) -> bool:
        """Run one command line; False when the user wants to leave."""
        if not line:
            return True
        if not line.startswith("/"):
            self.say("Commands start with /, e.g. /meme drake. Type /help for the list.")
            return True
        name, _, argument = line[1:].partition(" ")
        name = name.lower()
        if name in ("quit", "exit", "q"):
            return False
        command = self.commands.get(name)
        if command is None:
            self.say(f"Unknown command /{name}. Type /help for the list.")
            return True
        try:
            await command(argument.strip())
        except MemeError as exc:
            self.say(error_text(exc, WORDING))
        return True

    # --- commands ---

    async def meme(self, argument: str) -> None:
        word, rest = first_word(argument)
        picture = picture_at(word)
        if picture is not None:
            self.show(await self.service.make_meme(self.ctx, picture, rest))
            return
        template, prefix = self.service.split_template(argument)
        self.show(await self.service.make_meme(self.ctx, template, prefix))

    async def caption(self, argument: str) -> None:
        template, text = first_word(argument)
        self.show(await self.service.caption(self.ctx, picture_at(template) or template, text.split("|")))

    async def reroll(self, argument: str) -> None:
        if self.last is None:
            self.say("Make a meme first: /meme")
            return
        self.show(await self.service.reroll(self.ctx, self.last.id))

    async def rate(self, argument: str) -> None:
        if self.last is None:
            self.say("Make a meme first: /meme")
            return
        vote = VOTES.get(argument.lower())
        if vote is None:
            self.say("Rate with /rate 👍 or /rate 👎 (or + and -).")
            return
        score = await self.service.rate(self.ctx, self.last.id, vote)
        self.say(f"#{self.last.id}: 👍 {score.up} 👎 {score.down}")

    async def templates(self, argument: str) -> None:
        found = self.service.templates(argument, 1000 if not argument else 15)
        if not found:
            self.say(f'No template matches "{argument}".')
        for t in found:
            model = "" if t.has_data else "  (no model data)"
            self.say(f"{t.slug:<40} {t.name}{model}")

    async def history(self, argument: str) -> None:
        memes = await self.service.history(self.ctx)
        if not memes:
            self.say("No memes yet. Try /meme")
        for m in memes:
            self.say(f"#{m.id} {m.template}: {' | '.join(b for b in m.boxes if b)}  👍 {m.up} 👎 {m.down}")

    async def top(self, argument: str) -> None:
        board = await self.service.leaderboard(self.ctx, argument)
        if not board.entries:
            self.say(f"No memes with more 👍 than 👎 from {board.period.label} yet. Rate them with /rate 👍")
        for entry in board.entries:
            meme = entry.meme
            self.say(
                f"{entry.rank}. #{meme.id} {meme.template}: {entry.text or '(empty)'}  "
                f"{meme.score.value:+d} (👍 {meme.up} 👎 {meme.down})"
            )

    async def forget(self, argument: str) -> None:
        if argument:
            meme_id = meme_number(argument)
        elif self.last is not None:
            meme_id = self.last.id
        else:
            self.say("Which meme? /forget 12 (numbers are in /history)")
            return
        forgotten = await self.service.forget(self.ctx, meme_id)
        if self.last is not None and self.last.id == forgotten.id:
            self.last = None  # /rate and /reroll no longer have it
        self.say(f"Forgotten: #{forgotten.id} is gone from /history, /top and the exports.")

    async def settings(self, argument: str) -> None:
        if argument.strip().lower() == "help":
            self.say(f"Change one with /settings NAME VALUE (or NAME {RESET_WORDS[0]}):\n{settings_help()}")
            return
        if argument:
            values = await self.service.set_settings(self.ctx, split_changes(argument))
            self.say("Saved.")
        else:
            values = await self.service.get_settings(self.ctx)
        self.say(format_settings(values))

    async def help(self, argument: str) -> None:
        self.say(HELP)

    # --- output ---

    def found(self, made: MadeMeme) -> str:
        if made.found is not None and made.found.how == "recognized":
            return f" (recognised {made.template.name}: /meme {made.template.slug})"
        if made.found is not None and made.found.how == "picked":
            others = ", ".join(f"/meme {t.slug}" for t in made.found.alternatives)
            return " (picked for your words" + (f"; or try {others})" if others else ")")
        return ""

    def show(self, made: MadeMeme) -> None:
        self.last = made
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / f"meme-{made.id}{made.image.extension}"
        path.write_bytes(made.image.data)
        self.say(f"#{made.id} {made.template.name}{self.found(made)}: {made.text or '(empty)'}")
        note = missing_note(made.image.missing)
        if note:
            self.say(note)
        self.say(f"saved {display_path(path)}")


def picture_at(word: str) -> Picture | None:
    """The picture file a command names in place of a template (`/meme cat.jpg when the`), if
    `word` is a file; BadPictureError when it is one that cannot be read or is too big."""
    path = Path(word).expanduser() if word else None
    if path is None or not path.is_file():
        return None
    try:
        size = path.stat().st_size
        if size > MAX_UPLOAD_BYTES:  # refused before reading it
            raise BadPictureError(too_big(size))
        return Picture(path.read_bytes(), name=path.name)
    except OSError as exc:
        raise BadPictureError(f"I can't read {path}: {exc.strerror or exc}") from None


def first_word(text: str) -> tuple[str, str]:
    parts = text.split(maxsplit=1)
    return (parts[0] if parts else ""), (parts[1].strip() if len(parts) > 1 else "")


def display_path(path: Path) -> str:
    """Relative to the working directory when inside it: shorter to read and to copy."""
    try:
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)
