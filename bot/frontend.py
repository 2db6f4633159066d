"""What every chat front end (Telegram, Discord, console) is to the app that runs it."""

from __future__ import annotations

from typing import Protocol


class StartError(RuntimeError):
    """The bot cannot start; the message tells the operator what to fix."""


class FrontEnd(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
