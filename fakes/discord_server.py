"""A fake Discord: gateway websocket and REST API on 127.0.0.1, for driving the real discord.py.

The tests point discord.py at it (`Route.BASE`, `DiscordWebSocket.DEFAULT_GATEWAY`) and then act
as Discord users: `run_command`, `autocomplete` and `press_button` dispatch INTERACTION_CREATE
over the gateway, and everything the bot sends back over REST is recorded as `FakeInteraction`s
and `FakeMessage`s to assert on. It models the Discord rules a bot can get wrong:

- an interaction must be acknowledged within 3 seconds, and only once;
- after a deferred response the first follow-up replaces the "thinking" message and keeps the
  defer's visibility (its own ephemeral flag is ignored) until that message is deleted;
- command invocations are built from the commands the bot synced, so a test can only send
  options the bot really registered;
- a button press carries the message it is on, as stored here, so presses on old messages work
  across bot restarts just as they do on Discord;
- `rate_limit()` answers a route with a 429 carrying `retry_after` and a `Via` header.

See fakes/README.md for how to extend it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

EPHEMERAL = 1 << 6  # message flag
LOADING = 1 << 7  # message flag of a deferred "is thinking..." response
MANAGE_GUILD = 1 << 5  # permission bit
ALL_PERMISSIONS = (1 << 50) - 1
ACK_DEADLINE_S = 3.0  # Discord forgets an interaction not acknowledged by then

# Interaction types and callback types from the Discord API.
APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE = 2, 3, 4
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE, AUTOCOMPLETE_RESULT = (
    4,
    5,
    6,
    7,
    8,
)

ATTACHMENT_OPTION = 11  # application command option type
MESSAGE_COMMAND = 3  # application command type: a message's context menu

# Option types whose values a command invocation carries as JSON numbers or booleans.
_OPTION_TYPES = {"str": 3, "int": 4, "bool": 5, "float": 10}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _allowed_in_dms(command: dict[str, Any]) -> bool:
    contexts = command.get("contexts")
    if contexts is not None:
        return 1 in contexts  # InteractionContextType.BOT_DM
    return command.get("dm_permission", True) is not False


def _name_problem(command: dict[str, Any]) -> str:
    """What Discord would refuse in a command's name: a slash command's is 1-32 lower-case
    letters, digits, - or _; a context-menu (user or message) command's is 1-32 characters, any
    case, spaces allowed, and it has no description or options."""
    name = str(command.get("name", ""))
    if command.get("type", 1) == 1:
        if not re.fullmatch(r"[-_\w]{1,32}", name) or name != name.lower():
            return "a slash command's name is 1-32 lower-case letters, digits, - or _"
        return ""
    if not 1 <= len(name) <= 32 or name != name.strip():
        return "a context-menu command's name is 1-32 characters"
    if command.get("description") or command.get("options"):
        return "a context-menu command takes no description or options"
    return ""


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py only parses a body as JSON when Content-Type is exactly application/json;
    # aiohttp's json_response would add "; charset=utf-8".
    return web.Response(
        status=status,
        body=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"code": code, "message": message}, status=status)


@dataclass(frozen=True)
class FakeUser:
    """A Discord user acting in the test guild; `permissions` is the permission bit set."""

    id: int
    name: str = "tester"
    permissions: int = 0
    nick: str | None = None  # the member's nickname on the test guild, shown there instead of `name`

    def user_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
        }

    def member_json(self) -> dict[str, Any]:
        return {
            "user": self.user_json(),
            "roles": [],
            "permissions": str(self.permissions),
            "flags": 0,
            "joined_at": "2024-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "nick": self.nick,
            "avatar": None,
        }


@dataclass
class FakeAttachment:
    id: int
    filename: str
    data: bytes
    content_type: str
    description: str | None = None


@dataclass
class Upload:
    """A file a user attaches: to a command's attachment option, or to a message they post."""

    data: bytes
    filename: str = "picture.png"
    content_type: str = "image/png"


@dataclass
class FakeMessage:
    """A message in the test channel: one the bot posted (an interaction response or follow-up),
    or one a user posted (`author`), which message commands can target."""

    id: int
    channel_id: int
    interaction_id: int | None
    content: str = ""
    flags: int = 0
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    deleted: bool = False
    edits: int = 0
    author: FakeUser | None = None  # None: the bot
    embeds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    @property
    def buttons(self) -> list[dict[str, Any]]:
        return [c for row in self.components for c in row.get("components", []) if c.get("type") == 2]

    def button_texts(self) -> list[str]:
        """Each button as a user sees it: emoji, then label, e.g. "👍 1"."""
        texts = []
        for b in self.buttons:
            parts = [(b.get("emoji") or {}).get("name", ""), b.get("label") or ""]
            texts.append(" ".join(p for p in parts if p))
        return texts

    def to_json(self, fake: FakeDiscord) -> dict[str, Any]:
        if self.author is None:
            sender = {
                "type": 20,  # chat input command reply
                "author": fake.bot_user,
                "webhook_id": str(fake.application_id),
                "application_id": str(fake.application_id),
            }
        else:
            sender = {"type": 0, "author": self.author.user_json(), "member": self.author.member_json()}
        return {
            "id": str(self.id),
            **sender,
            "channel_id": str(self.channel_id),
            "content": self.content,
            "flags": self.flags,
            "components": self.components,
            "attachments": [fake.attachment_json(a, self.channel_id) for a in self.attachments],
            "embeds": self.embeds,
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": False,
            "pinned": False,
            "tts": False,
            "timestamp": _now_iso(),
            "edited_timestamp": _now_iso() if self.edits else None,
        }


@dataclass
class FakeInteraction:
    """One interaction the test dispatched, and everything the bot answered to it."""

    id: int
    token: str
    type: int
    user: FakeUser
    channel_id: int
    guild_id: int | None  # None: in the user's direct messages with the bot
    dispatched_at: float
    message: FakeMessage | None = None  # the message a pressed button is on
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # {"type", "data", "at"}
    original: FakeMessage | None = None  # the response message (or the deferred placeholder)
    followups: list[FakeMessage] = field(default_factory=list)

    @property
    def acknowledged(self) -> bool:
        return bool(self.callbacks)

    @property
    def messages(self) -> list[FakeMessage]:
        """The messages this interaction left in the channel, in order, deleted ones excluded."""
        every = ([self.original] if self.original else []) + self.followups
        return [m for m in every if not m.deleted]


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    at: float
    status: int = 0


@dataclass
class _RateLimit:
    method: str
    path: re.Pattern[str]
    retry_after: float
    times: int


class FakeDiscord:
    """Gateway + REST on 127.0.0.1 (random port). `await start()`, then patch discord.py to `api_base`/`gateway_url`."""

    def __init__(
        self, token: str, *, application_id: int = 4100, guild_id: int = 4200, channel_id: int = 4300
    ):
        self.token = token
        self.application_id = application_id
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.dm_channel_id = channel_id + 1  # every user's DM channel with the bot, in this fake
        self.bot_user = {
            "id": str(application_id),
            "username": "memebot",
            "global_name": None,
            "discriminator": "0",
            "avatar": None,
            "bot": True,
        }
        self.url = ""
        self.requests: list[RecordedRequest] = []
        self.unhandled: list[RecordedRequest] = []  # routes the fake does not serve: tests assert none
        self.commands: dict[
            int | None, list[dict[str, Any]]
        ] = {}  # scope (guild id, None = global) -> synced commands
        self.identify: dict[str, Any] | None = None  # the latest IDENTIFY payload
        self.identifies: list[dict[str, Any]] = []  # every one, in order (a sharded bot sends several)
        self.sessions = 0  # gateway connections that completed IDENTIFY
        self.interactions: dict[str, FakeInteraction] = {}  # by token
        self.messages: dict[int, FakeMessage] = {}
        self.uploads: dict[int, FakeAttachment] = {}  # files users attached to command options
        self.downloads: list[str] = []  # attachment paths fetched (by the bot: tests only look)
        self._ids = itertools.count(1_200_000_000_000_000_000)
        # Live gateway connections by shard id; a bot that sends no `shard` is shard 0 of 1.
        self._sockets: dict[int, web.WebSocketResponse] = {}
        self._seqs: dict[int, int] = {}
        self.shard_count = 1  # as the latest IDENTIFY said
        self._rate_limits: list[_RateLimit] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record_middleware])
        api = "/api/v10"
        app.router.add_get("/", self._gateway)
        app.router.add_get(f"{api}/gateway", self._get_gateway)
        app.router.add_get(f"{api}/gateway/bot", self._get_gateway)
        app.router.add_get(f"{api}/users/@me", self._get_me)
        app.router.add_get(f"{api}/oauth2/applications/@me", self._get_application)
        app.router.add_put(f"{api}/applications/{{app}}/commands", self._put_commands)
        app.router.add_put(f"{api}/applications/{{app}}/guilds/{{guild}}/commands", self._put_commands)
        app.router.add_post(f"{api}/interactions/{{id}}/{{token}}/callback", self._callback)
        app.router.add_post(f"{api}/webhooks/{{app}}/{{token}}", self._followup)
        app.router.add_patch(
            f"{api}/webhooks/{{app}}/{{token}}/messages/{{message}}", self._edit_webhook_message
        )
        app.router.add_delete(
            f"{api}/webhooks/{{app}}/{{token}}/messages/{{message}}", self._delete_webhook_message
        )
        app.router.add_get(f"{api}/channels/{{channel}}/messages/{{message}}", self._get_message)
        app.router.add_delete(f"{api}/channels/{{channel}}/messages/{{message}}", self._delete_message)
        app.router.add_get("/attachments/{channel}/{id}/{name}", self._get_attachment)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        for ws in list(self._sockets.values()):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/"

    # ---- test controls ------------------------------------------------------------------------

    def rate_limit(self, method: str, path: str, *, retry_after: float, times: int = 1) -> None:
        """Answer the next `times` requests matching `method` and regex `path` (under /api/v10) with a 429."""
        self._rate_limits.append(_RateLimit(method, re.compile(path), retry_after, times))

    async def wait_until(self, predicate: Callable[[], Any], timeout: float = 10.0) -> None:
        """Wait until `predicate()` is true; it is re-checked after every request and gateway event."""

        async def wait() -> None:
            async with self._changed:
                await self._changed.wait_for(predicate)

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            recent = "\n".join(f"  {r.method} {r.path} -> {r.status}" for r in self.requests[-8:])
            raise AssertionError(
                f"fake Discord: condition not met within {timeout} s; the bot's last requests:\n{recent}"
            ) from None

    async def wait_connected(self, sessions: int = 1, timeout: float = 10.0) -> None:
        """Wait until the bot's gateway connection number `sessions` has identified."""
        await self.wait_until(lambda: self.sessions >= sessions and bool(self._sockets), timeout)

    def shard_of(self, guild_id: int | None) -> int:
        """The shard Discord sends a guild's events on (a DM's: shard 0), as its docs define it."""
        return 0 if guild_id is None else (guild_id >> 22) % self.shard_count

    async def run_command(
        self, name: str, user: FakeUser, *, dm: bool = False, channel_id: int | None = None, **options: Any
    ) -> FakeInteraction:
        """A user runs slash command `name` with `options`, checked against what the bot synced;
        `dm`: in their direct messages with the bot, where only global commands that allow DMs exist;
        `channel_id`: in another channel of the test guild (default: `self.channel_id`)."""
        command = self._command(name, dm=dm)
        uploads = {key: self._stored(value) for key, value in options.items() if isinstance(value, Upload)}
        options = {key: uploads.get(key, value) for key, value in options.items()}
        data = {**self._command_data(command), "options": self._options(command, options)}
        if uploads:  # an attachment option carries the id; the file itself comes in `resolved`
            channel = self.dm_channel_id if dm else self.channel_id
            data["resolved"] = {
                "attachments": {str(a.id): self.attachment_json(a, channel) for a in uploads.values()}
            }
        return await self._dispatch_interaction(APPLICATION_COMMAND, data, user, dm=dm, channel_id=channel_id)

    async def autocomplete(
        self, name: str, user: FakeUser, focused: str, **options: Any
    ) -> list[dict[str, Any]]:
        """A user types into option `focused` of `name`; returns the choices the bot offered."""
        command = self._command(name)
        opts = self._options(command, options, partial=True)
        for opt in opts:
            if opt["name"] == focused:
                opt["focused"] = True
        if not any(o.get("focused") for o in opts):
            raise AssertionError(f"autocomplete: give a value for the focused option {focused!r}")
        data = {**self._command_data(command), "options": opts}
        interaction = await self._dispatch_interaction(AUTOCOMPLETE, data, user)
        await self.wait_until(lambda: interaction.acknowledged)
        callback = interaction.callbacks[0]
        assert callback["type"] == AUTOCOMPLETE_RESULT, callback
        return callback["data"]["choices"]

    async def run_message_command(self, name: str, user: FakeUser, target: FakeMessage) -> FakeInteraction:
        """A user picks `name` in the context menu of message `target` (a message command)."""
        command = self._command(name)
        if command.get("type") != MESSAGE_COMMAND:
            raise AssertionError(f"{name!r} is not a message command (type {command.get('type')})")
        data = {
            **self._command_data(command),
            "target_id": str(target.id),
            "resolved": {"messages": {str(target.id): target.to_json(self)}},
        }
        return await self._dispatch_interaction(APPLICATION_COMMAND, data, user)

    def post_message(
        self, user: FakeUser, content: str = "", uploads: tuple[Upload, ...] = ()
    ) -> FakeMessage:
        """A user posts a message (text, files) in the test channel; the bot is not told (no intent)."""
        message = FakeMessage(
            id=next(self._ids),
            channel_id=self.channel_id,
            interaction_id=None,
            content=content,
            attachments=[self._stored(upload) for upload in uploads],
            author=user,
        )
        self.messages[message.id] = message
        return message

    def delete_message(self, message: FakeMessage) -> None:
        """A moderator deletes a message (the bot is not told: it has no message intents)."""
        message.deleted = True

    def attachment_json(self, a: FakeAttachment, channel_id: int) -> dict[str, Any]:
        url = f"{self.url}/attachments/{channel_id}/{a.id}/{a.filename}"
        return {
            "id": str(a.id),
            "filename": a.filename,
            "size": len(a.data),
            "url": url,
            "proxy_url": url,
            "content_type": a.content_type,
            **({"description": a.description} if a.description else {}),
        }

    def _stored(self, upload: Upload) -> FakeAttachment:
        attachment = FakeAttachment(next(self._ids), upload.filename, upload.data, upload.content_type)
        self.uploads[attachment.id] = attachment
        return attachment

    async def press_button(
        self, message: FakeMessage, custom_id: str, user: FakeUser, *, dm: bool = False
    ) -> FakeInteraction:
        """A user presses the button `custom_id` on a message the bot posted earlier."""
        if not any(b.get("custom_id") == custom_id for b in message.buttons):
            raise AssertionError(f"message {message.id} has no button {custom_id!r}: {message.buttons}")
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._dispatch_interaction(MESSAGE_COMPONENT, data, user, message=message, dm=dm)

    def visible_commands(self, user: FakeUser) -> list[str]:
        """The command names Discord would list for `user` (default_member_permissions applied)."""
        names = []
        for scope in (None, self.guild_id):
            for cmd in self.commands.get(scope, []):
                needed = cmd.get("default_member_permissions")
                if needed is None or (int(needed) & user.permissions) == int(needed):
                    names.append(cmd["name"])
        return names

    # ---- interaction building -----------------------------------------------------------------

    def _command(self, name: str, dm: bool = False) -> dict[str, Any]:
        for scope in (None,) if dm else (self.guild_id, None):
            for cmd in self.commands.get(scope, []):
                if cmd["name"] == name:
                    if dm and not _allowed_in_dms(cmd):
                        raise AssertionError(f"/{name} is not offered in direct messages")
                    return cmd
        synced = sorted(c["name"] for cmds in self.commands.values() for c in cmds)
        raise AssertionError(f"the bot never synced a command {name!r} (synced: {synced})")

    @staticmethod
    def _command_data(command: dict[str, Any]) -> dict[str, Any]:
        data = {"id": command["id"], "name": command["name"], "type": command.get("type", 1)}
        if command.get("guild_id"):
            data["guild_id"] = command["guild_id"]
        return data

    @staticmethod
    def _options(
        command: dict[str, Any], values: dict[str, Any], partial: bool = False
    ) -> list[dict[str, Any]]:
        defined = {o["name"]: o for o in command.get("options", [])}
        unknown = set(values) - set(defined)
        if unknown:
            raise AssertionError(
                f"/{command['name']} has no option {sorted(unknown)} (has {sorted(defined)})"
            )
        options = []
        for name, spec in defined.items():
            if name not in values:
                if spec.get("required") and not partial:
                    raise AssertionError(f"/{command['name']}: option {name!r} is required")
                continue
            value = values[name]
            if spec["type"] == ATTACHMENT_OPTION or isinstance(value, FakeAttachment):
                if spec["type"] != ATTACHMENT_OPTION or not isinstance(value, FakeAttachment):
                    raise AssertionError(f"/{command['name']} {name}: an attachment option takes an Upload")
                options.append({"name": name, "type": ATTACHMENT_OPTION, "value": str(value.id)})
                continue
            choices = [c["value"] for c in spec.get("choices", [])]
            if choices and not partial and value not in choices:
                raise AssertionError(f"/{command['name']} {name}: {value!r} is not one of {choices}")
            expected = _OPTION_TYPES.get(type(value).__name__)
            if (
                expected is not None
                and expected != spec["type"]
                and not (expected == 4 and spec["type"] == 10)
            ):
                raise AssertionError(f"/{command['name']} {name}: option type {spec['type']}, got {value!r}")
            options.append({"name": name, "type": spec["type"], "value": value})
        return options

    async def _dispatch_interaction(
        self,
        type_: int,
        data: dict[str, Any],
        user: FakeUser,
        message: FakeMessage | None = None,
        dm: bool = False,
        channel_id: int | None = None,
    ) -> FakeInteraction:
        if not self._sockets:
            raise AssertionError("no bot is connected to the fake gateway")
        channel = channel_id or (message.channel_id if message is not None else self.channel_id)
        interaction_id = next(self._ids)
        token = f"itoken-{interaction_id}"
        interaction = FakeInteraction(
            id=interaction_id,
            token=token,
            type=type_,
            user=user,
            channel_id=self.dm_channel_id if dm else channel,
            guild_id=None if dm else self.guild_id,
            dispatched_at=time.monotonic(),
            message=message,
        )
        self.interactions[token] = interaction
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": type_,
            "token": token,
            "version": 1,
            "guild_id": str(self.guild_id),
            "channel_id": str(channel),
            "channel": {
                "id": str(channel),
                "type": 0,
                "guild_id": str(self.guild_id),
                "name": "memes",
                "position": 0,
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
            },
            "member": user.member_json(),
            "app_permissions": str(ALL_PERMISSIONS),
            "attachment_size_limit": 10 * 1024 * 1024,
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)},
            "context": 0,
            "data": data,
        }
        if dm:  # what Discord sends from a bot DM: no guild, no member, the user and a DM channel
            for key in ("guild_id", "member", "guild_locale"):
                del payload[key]
            payload["user"] = user.user_json()
            payload["channel_id"] = str(self.dm_channel_id)
            payload["channel"] = {"id": str(self.dm_channel_id), "type": 1, "recipients": [user.user_json()]}
            payload["authorizing_integration_owners"] = {"0": "0"}
            payload["context"] = 1  # BOT_DM
        if message is not None:
            payload["message"] = message.to_json(self)
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a gateway DISPATCH event to the connected bot, on the shard of its guild."""
        shard = self.shard_of(int(data["guild_id"]) if data.get("guild_id") else None)
        ws = self._sockets.get(shard)
        if ws is None:
            raise AssertionError(
                f"no bot is connected to the fake gateway as shard {shard} of {self.shard_count}"
            )
        self._seqs[shard] += 1
        await ws.send_str(json.dumps({"op": 0, "t": event, "s": self._seqs[shard], "d": data}))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- gateway ------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                if frame["op"] == 1:  # heartbeat
                    await ws.send_str(json.dumps({"op": 11}))
                elif frame["op"] == 2:  # identify
                    await self._identify(ws, frame["d"])
                elif frame["op"] == 6:  # resume: not modelled, ask for a fresh session
                    await ws.send_str(json.dumps({"op": 9, "d": False}))
        finally:
            for shard, live in list(self._sockets.items()):
                if live is ws:
                    del self._sockets[shard]
            await self._notify()
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        # Discord's rules for the `shard` field: [id, count], 0 <= id < count, else close 4010.
        shard_id, count = data.get("shard", [0, 1])
        if not 0 <= shard_id < count:
            await ws.close(code=4010, message=b"Invalid shard.")
            return
        self.identify = data
        self.identifies.append(data)
        self.shard_count = count
        self._sockets[shard_id] = ws
        self._seqs[shard_id] = 1
        ready = {
            "v": 10,
            "shard": [shard_id, count],
            "session_id": f"session-{self.sessions + 1}",
            "resume_gateway_url": self.gateway_url,
            "user": self.bot_user,
            "guilds": [],
            "application": {"id": str(self.application_id), "flags": 0},
        }
        await ws.send_str(json.dumps({"op": 0, "t": "READY", "s": 1, "d": ready}))
        self.sessions += 1
        await self._notify()

    # ---- REST ---------------------------------------------------------------------------------

    @web.middleware
    async def _record_middleware(
        self, request: web.Request, handler: Callable[..., Any]
    ) -> web.StreamResponse:
        record = RecordedRequest(request.method, request.path, dict(request.query), time.monotonic())
        if request.path.startswith("/api/"):
            self.requests.append(record)
            response = self._maybe_rate_limit(request)
            if response is None:
                try:
                    response = await handler(request)
                except web.HTTPNotFound:
                    self.unhandled.append(record)
                    response = _error(404, 0, f"fake Discord does not serve {request.method} {request.path}")
        else:
            response = await handler(request)
        record.status = response.status
        await self._notify()
        return response

    def _maybe_rate_limit(self, request: web.Request) -> web.Response | None:
        path = request.path.removeprefix("/api/v10")
        for limit in self._rate_limits:
            if limit.times > 0 and limit.method == request.method and limit.path.fullmatch(path):
                limit.times -= 1
                headers = {
                    "Via": "1.1 google",  # discord.py only retries 429s that came through Discord's edge
                    "X-RateLimit-Limit": "1",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset-After": str(limit.retry_after),
                    "X-RateLimit-Bucket": "fake-bucket",
                    "X-RateLimit-Scope": "user",
                }
                body = {
                    "message": "You are being rate limited.",
                    "retry_after": limit.retry_after,
                    "global": False,
                }
                return _json(body, status=429, headers=headers)
        return None

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    async def _get_gateway(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _get_me(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        return _json(self.bot_user)

    async def _get_application(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        owner = {"id": "4001", "username": "owner", "discriminator": "0", "avatar": None}
        return _json(
            {
                "id": str(self.application_id),
                "name": "memebot",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": owner,
                "verify_key": "0" * 64,
                "flags": 0,
            }
        )

    async def _put_commands(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 0, "401: Unauthorized")
        if int(request.match_info["app"]) != self.application_id:
            return _error(403, 50001, "Missing Access")
        guild = request.match_info.get("guild")
        scope = int(guild) if guild else None
        previous = {c["name"]: c["id"] for c in self.commands.get(scope, [])}
        commands = await request.json()
        for cmd in commands:  # Discord's naming rules: the bot learns of a bad name at sync
            problem = _name_problem(cmd)
            if problem:
                return _error(400, 50035, f"Invalid Form Body: {cmd.get('name')!r}: {problem}")
        synced = []
        for cmd in commands:
            synced.append(
                {
                    "type": 1,
                    "description": "",  # what Discord stores for a context-menu command
                    "default_member_permissions": None,
                    "nsfw": False,
                    **cmd,
                    "id": previous.get(cmd["name"]) or str(next(self._ids)),
                    "application_id": str(self.application_id),
                    "version": str(next(self._ids)),
                    **({"guild_id": str(scope)} if scope else {}),
                }
            )
        self.commands[scope] = synced
        return _json(synced)

    async def _read_message_body(self, request: web.Request) -> tuple[dict[str, Any], list[FakeAttachment]]:
        """JSON body, or multipart with `payload_json` and `files[n]` parts, as discord.py sends files."""
        if not request.content_type.startswith("multipart/"):
            return await request.json(), []
        payload: dict[str, Any] = {}
        files: list[tuple[int, str, bytes, str]] = []
        reader = await request.multipart()
        async for part in reader:
            name = part.name or ""
            if name == "payload_json":
                payload = json.loads(await part.text())
            elif m := re.fullmatch(r"files\[(\d+)\]", name):
                files.append(
                    (
                        int(m[1]),
                        part.filename or "file",
                        await part.read(),
                        part.headers.get("Content-Type", ""),
                    )
                )
        data = payload.get("data", payload)  # callbacks nest the message under "data"
        described = {int(a["id"]): a for a in data.get("attachments", []) if str(a.get("id", "")).isdigit()}
        attachments = [
            FakeAttachment(
                next(self._ids), filename, body, ctype, described.get(index, {}).get("description")
            )
            for index, filename, body, ctype in files
        ]
        return payload, attachments

    def _new_message(
        self, interaction: FakeInteraction, data: dict[str, Any], files: list[FakeAttachment]
    ) -> FakeMessage:
        message = FakeMessage(
            id=next(self._ids),
            channel_id=interaction.channel_id,
            interaction_id=interaction.id,
            content=data.get("content") or "",
            flags=int(data.get("flags") or 0),
            components=data.get("components") or [],
            attachments=files,
            embeds=data.get("embeds") or [],
        )
        self.messages[message.id] = message
        return message

    @staticmethod
    def _apply_edit(message: FakeMessage, data: dict[str, Any], files: list[FakeAttachment]) -> None:
        if "content" in data:
            message.content = data["content"] or ""
        if "components" in data:
            message.components = data["components"] or []
        if "embeds" in data:
            message.embeds = data["embeds"] or []
        if "attachments" in data:
            keep = {str(a.get("id")) for a in data["attachments"]}
            message.attachments = [a for a in message.attachments if str(a.id) in keep]
        message.attachments += files
        message.flags &= ~LOADING
        message.edits += 1

    async def _callback(self, request: web.Request) -> web.Response:
        interaction = self.interactions.get(request.match_info["token"])
        if interaction is None or str(interaction.id) != request.match_info["id"]:
            return _error(404, 10062, "Unknown interaction")
        if time.monotonic() - interaction.dispatched_at > ACK_DEADLINE_S:
            return _error(404, 10062, "Unknown interaction")  # too late: Discord already showed a failure
        if interaction.acknowledged:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        body, files = await self._read_message_body(request)
        type_, data = body["type"], body.get("data") or {}
        interaction.callbacks.append({"type": type_, "data": data, "at": time.monotonic()})
        resource: dict[str, Any] | None = None
        if type_ == CHANNEL_MESSAGE:
            interaction.original = self._new_message(interaction, data, files)
            resource = {"type": type_, "message": interaction.original.to_json(self)}
        elif type_ == DEFERRED_CHANNEL_MESSAGE:
            flags = int(data.get("flags") or 0) | LOADING
            interaction.original = self._new_message(interaction, {"flags": flags}, [])
            resource = {"type": type_, "message": interaction.original.to_json(self)}
        elif type_ == UPDATE_MESSAGE:
            if interaction.message is None:
                return _error(400, 50035, "UPDATE_MESSAGE needs a component interaction")
            self._apply_edit(interaction.message, data, files)
            resource = {"type": type_, "message": interaction.message.to_json(self)}
        elif type_ not in (DEFERRED_UPDATE, AUTOCOMPLETE_RESULT):
            return _error(400, 50035, f"fake Discord does not model callback type {type_}")
        reply: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_loading": type_ == DEFERRED_CHANNEL_MESSAGE,
                "response_message_ephemeral": bool(int(data.get("flags") or 0) & EPHEMERAL),
            }
        }
        if interaction.original is not None and type_ in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            reply["interaction"]["response_message_id"] = str(interaction.original.id)
        if resource is not None:
            reply["resource"] = resource
        return _json(reply)

    def _webhook_interaction(self, request: web.Request) -> FakeInteraction | None:
        interaction = self.interactions.get(request.match_info["token"])
        if interaction is None or int(request.match_info["app"]) != self.application_id:
            return None
        return interaction if interaction.acknowledged else None

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        if interaction is None:
            return _error(404, 10015, "Unknown Webhook")
        data, files = await self._read_message_body(request)
        original = interaction.original
        if original is not None and original.loading and not original.deleted:
            # The first follow-up after a defer fills in the "thinking" message and keeps
            # the defer's visibility: its own flags are ignored.
            self._apply_edit(original, {**data, "attachments": []}, files)
            message = original
        else:
            message = self._new_message(interaction, data, files)
            interaction.followups.append(message)
        if request.query.get("wait") in ("1", "true"):
            return _json(message.to_json(self))
        return web.Response(status=204)

    def _webhook_message(self, request: web.Request, interaction: FakeInteraction) -> FakeMessage | None:
        ref = request.match_info["message"]
        if ref == "@original":
            message = interaction.original or (
                interaction.message if interaction.callbacks[0]["type"] == DEFERRED_UPDATE else None
            )
        else:
            message = self.messages.get(int(ref)) if ref.isdigit() else None
            if message is not None and message.interaction_id != interaction.id:
                message = None
        return None if message is None or message.deleted else message

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message = interaction and self._webhook_message(request, interaction)
        if not message:
            return _error(404, 10008, "Unknown Message")
        data, files = await self._read_message_body(request)
        self._apply_edit(message, data, files)
        return _json(message.to_json(self))

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message = interaction and self._webhook_message(request, interaction)
        if not message:
            return _error(404, 10008, "Unknown Message")
        message.deleted = True
        return web.Response(status=204)

    def _channel_message(self, request: web.Request) -> FakeMessage | None:
        ref = request.match_info["message"]
        message = self.messages.get(int(ref)) if ref.isdigit() else None
        if message is None or message.deleted or str(message.channel_id) != request.match_info["channel"]:
            return None
        return message

    async def _get_message(self, request: web.Request) -> web.Response:
        message = self._channel_message(request)
        if message is None or message.ephemeral:  # an ephemeral message is its reader's alone
            return _error(404, 10008, "Unknown Message")
        return _json(message.to_json(self))

    async def _delete_message(self, request: web.Request) -> web.Response:
        message = self._channel_message(request)
        if message is None or message.ephemeral:
            return _error(404, 10008, "Unknown Message")
        if message.author is not None:  # a bot without Manage Messages deletes only its own
            return _error(403, 50013, "Missing Permissions")
        message.deleted = True
        return web.Response(status=204)

    async def _get_attachment(self, request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        self.downloads.append(request.path)
        stored = [a for m in self.messages.values() for a in m.attachments] + list(self.uploads.values())
        for a in stored:
            if str(a.id) == wanted:
                return web.Response(body=a.data, headers={"Content-Type": a.content_type})
        raise web.HTTPNotFound()
