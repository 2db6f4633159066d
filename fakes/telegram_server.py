"""A fake Telegram Bot API server for end-to-end tests (aiohttp on 127.0.0.1, random port).

The real python-telegram-bot talks to it through `base_url`, exactly as it would talk to a
self-hosted Bot API server. The fake keeps just enough state to be believable: the chats'
messages (so a button press can carry the message it belongs to, and edits change it),
the updates waiting to be fetched, and who is an admin of which chat. Everything the bot
sends is recorded as a `Call`, and a test waits for the calls it expects.

Faults are injected per method: `fail_next("sendPhoto", status=500)` answers the next call
with an error; `stall_next("getUpdates", 3.0)` holds the next call for longer than the
client's timeout and then drops it unrecorded, as a lost request would be.

See fakes/README.md for how to use and extend it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from common.config import TelegramConfig

BOT_ID = 7000001
GROUP_ID = -1001  # the group chat `send_text` writes in unless told otherwise
BOT_DOWNLOAD_LIMIT = 20 * 2**20  # getFile refuses bigger files: bots download at most 20 MB
BOT_DELETE_WINDOW_S = 48 * 3600  # a bot deletes messages only while they are younger than this
MEDIA_GROUP_SIZES = range(2, 11)  # sendMediaGroup takes 2 to 10 items
WRONG_FILE = "Bad Request: wrong file identifier/HTTP URL specified"
# Inline mode's rules (Bot API): at most 50 results, ids and callback data of 1-64 bytes, one
# answer per query, given while the query is fresh (about 10 s; then this error).
MAX_INLINE_RESULTS = 50
MAX_ID_BYTES = 64
INLINE_ANSWER_DEADLINE_S = 10.0
QUERY_INVALID = "Bad Request: query is too old and response timeout expired or query ID is invalid"
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)
START_PARAMETER = re.compile(r"[A-Za-z0-9_-]{1,64}")
ADMIN_STATUSES = ("creator", "administrator")
WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")  # what setWebhook takes as secret_token
WEBHOOK_ATTEMPTS, WEBHOOK_RETRY_S = 50, 0.1  # a failed webhook delivery is tried again
WEBHOOK_CONFLICT = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)


@dataclass
class Call:
    """One Bot API request the bot made, as the fake understood it."""

    method: str
    params: dict[str, Any]  # form fields; JSON-looking values (reply_markup, ...) decoded
    files: dict[str, bytes] = field(default_factory=dict)  # multipart uploads by part name
    at: float = field(default_factory=time.monotonic)

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return None if value is None else int(value)

    @property
    def keyboard(self) -> list[list[dict[str, Any]]]:
        """The inline keyboard sent with this call, row by row ([] when there is none)."""
        markup = self.params.get("reply_markup") or {}
        return markup.get("inline_keyboard", [])


class ApiError(Exception):
    """A Bot API error reply (`ok: false`) from a method handler."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


@dataclass
class Fault:
    status: int = 500  # HTTP status of the error reply
    stall_s: float = 0.0  # > 0: hold the request this long, then drop it unrecorded
    delay_s: float = 0.0  # > 0: answer normally, but only after this long (a slow server)
    retry_after: int | None = None  # for 429 replies


@dataclass
class InlineQuery:
    """An inline query a user typed (`send_inline_query`) and the bot's answer to it."""

    id: str
    user_id: int
    query: str
    at: float = field(default_factory=time.monotonic)
    answer: Call | None = None  # the accepted answerInlineQuery call

    @property
    def results(self) -> list[dict[str, Any]]:
        return [] if self.answer is None else list(self.answer.params.get("results") or [])

    @property
    def button(self) -> dict[str, Any] | None:
        return None if self.answer is None else self.answer.params.get("button")


def _user(user_id: int, name: str = "", is_bot: bool = False, username: str | None = None) -> dict:
    user: dict[str, Any] = {"id": user_id, "is_bot": is_bot, "first_name": name or f"User{user_id}"}
    if username:
        user["username"] = username
    return user


def _decode(value: str) -> Any:
    """Form fields carry JSON for structured values (reply_markup, commands, ...)."""
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


class FakeTelegramServer:
    """Serves the Bot API methods the memebot uses; start with `await server.start()`."""

    def __init__(self, token: str = "123456:TEST-TOKEN", bot_username: str = "memebot_test_bot") -> None:
        self.token = token
        self.bot_user = _user(BOT_ID, "Memebot", is_bot=True, username=bot_username)
        self.calls: list[Call] = []
        self.chats: dict[int, dict[str, Any]] = {}  # chat id -> Bot API chat object
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}  # (chat, message id) -> message
        self.members: dict[tuple[int, int], str] = {}  # (chat, user) -> status; default "member"
        self.files: dict[str, bytes] = {}  # file_id -> content: what users sent and the bot's photos
        self.names: dict[int, tuple[str, str]] = {}  # user id -> (first, last) name; see `name_user`
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count] = defaultdict(lambda: itertools.count(1))
        self._faults: dict[str, deque[Fault]] = defaultdict(deque)
        # The bot's answers by what they answer (see `answer_key`), for load tests that wait
        # on hundreds of commands at once without rescanning `calls`.
        self.answers: dict[str, list[Call]] = defaultdict(list)
        self._answered: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._changed = asyncio.Event()  # set (and replaced) on every new update and every call
        self._runner: web.AppRunner | None = None
        self._closing = False
        self.port = 0
        # Inline mode: queries by id; messages sent through the bot by inline_message_id (what
        # the chat shows: photo file_id and keyboard); whether the bot gets chosen_inline_result
        # (BotFather's /setinlinefeedback); the update kinds the bot asked for (getUpdates).
        self.inline_queries: dict[str, InlineQuery] = {}
        self.inline_messages: dict[str, dict[str, Any]] = {}
        self.inline_feedback = True
        self.inline_answer_deadline_s = INLINE_ANSWER_DEADLINE_S
        self.allowed_updates: list[str] = []
        # Webhook mode (setWebhook): updates are POSTed to the bot instead of waiting for
        # getUpdates. `webhook` is what setWebhook set; `webhook_proxy` ("http://host:port", or
        # several: one process each, taken in turn) is where the test's stand-in for a reverse
        # proxy forwards the webhook URL's path (the URL itself is https, which nothing here
        # serves); `webhook_statuses` the bot's answers.
        self.webhook: dict[str, Any] | None = None
        self.webhook_proxy: str | list[str] = ""
        self._proxy_turn = itertools.count()
        self.webhook_statuses: list[int] = []
        self.webhook_posts: list[tuple[dict[str, Any], str, int]] = []  # (update, where, status) each POST
        self._delivery: asyncio.Task[None] | None = None
        self._posts: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        self._closing = True
        self._notify()  # long polls in progress return now instead of holding up the shutdown
        tasks = [t for t in [self._delivery, *self._posts] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegramServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    def bot_config(self) -> TelegramConfig:
        """The [telegram] settings an operator would write to point the bot at this server."""
        return TelegramConfig(
            enabled=True, api_url=self.base_url, file_url=self.file_url, token=self.token, poll_timeout_s=1.0
        )

    # --- what a test injects ----------------------------------------------------------------

    def chat(self, chat_id: int, kind: str = "group", title: str = "Meme Lab") -> dict[str, Any]:
        """The Bot API chat object for `chat_id` (private chats: chat id == user id)."""
        if chat_id not in self.chats:
            chat: dict[str, Any] = {"id": chat_id, "type": kind}
            if kind == "private":
                chat["first_name"] = f"User{chat_id}"
            else:
                chat["title"] = title
            self.chats[chat_id] = chat
        return self.chats[chat_id]

    def name_user(self, user_id: int, first_name: str, last_name: str = "") -> None:
        """The name a user's messages and presses carry from now on (default: "User<id>")."""
        self.names[user_id] = (first_name, last_name)

    def user(self, user_id: int) -> dict[str, Any]:
        """The Bot API user object of a (non-bot) user, with their name."""
        first, last = self.names.get(user_id, ("", ""))
        user = _user(user_id, first)
        if last:
            user["last_name"] = last
        return user

    def delete_message(self, chat_id: int, message_id: int) -> None:
        """Someone (a user, an admin) deletes a message: it is gone from the chat, as for the bot."""
        self.messages.pop((chat_id, message_id), None)

    def set_member(self, chat_id: int, user_id: int, status: str) -> None:
        """`status`: creator | administrator | member | restricted | left | kicked."""
        self.members[(chat_id, user_id)] = status

    def push_update(self, payload: dict[str, Any]) -> int:
        """Queue a raw update (without `update_id`) for getUpdates; returns its update id."""
        update = {"update_id": next(self._update_ids), **payload}
        self._updates.append(update)
        self._notify()
        return update["update_id"]

    def send_text(
        self, text: str, *, chat_id: int = GROUP_ID, user_id: int = 501, kind: str = "group", **extra: Any
    ) -> dict[str, Any]:
        """A user writes `text` in a chat; a leading /command gets its bot_command entity."""
        chat = self.chat(chat_id, kind if chat_id != user_id else "private")
        message: dict[str, Any] = {
            "message_id": next(self._message_ids[chat_id]),
            "date": int(time.time()),
            "chat": chat,
            "from": self.user(user_id),
            "text": text,
            **extra,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        self.messages[(chat_id, message["message_id"])] = message
        self.push_update({"message": message})
        return message

    def add_file(self, data: bytes, kind: str = "photo") -> str:
        """Store `data` as Telegram stores an upload; returns its file_id."""
        file_id = f"{kind}-{len(self.files) + 1}"
        self.files[file_id] = data
        return file_id

    def send_photo(
        self,
        data: bytes,
        caption: str | None = None,
        *,
        chat_id: int = GROUP_ID,
        user_id: int = 501,
        as_document: bool = False,
        size: tuple[int, int] = (800, 600),
        **extra: Any,
    ) -> dict[str, Any]:
        """A user sends a picture: as a photo (Telegram lists a thumbnail and the full size) or
        as a file (`as_document`), with an optional caption (a leading /command gets its entity)."""
        chat = self.chat(chat_id, "group" if chat_id != user_id else "private")
        file_id = self.add_file(data, "document" if as_document else "photo")
        message: dict[str, Any] = {
            "message_id": next(self._message_ids[chat_id]),
            "date": int(time.time()),
            "chat": chat,
            "from": self.user(user_id),
            **extra,
        }
        if as_document:
            message["document"] = {
                "file_id": file_id,
                "file_unique_id": file_id,
                "file_name": "picture.png",
                "mime_type": "image/png",
                "file_size": len(data),
            }
        else:
            thumbnail = self.add_file(data[:64], "thumb")  # never the one to caption
            width, height = size
            message["photo"] = [
                {
                    "file_id": thumbnail,
                    "file_unique_id": thumbnail,
                    "width": 90,
                    "height": 90,
                    "file_size": 64,
                },
                {
                    "file_id": file_id,
                    "file_unique_id": file_id,
                    "width": width,
                    "height": height,
                    "file_size": len(data),
                },
            ]
        if caption is not None:
            message["caption"] = caption
            if caption.startswith("/"):
                command = caption.split()[0]
                message["caption_entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        self.messages[(chat_id, message["message_id"])] = message
        self.push_update({"message": message})
        return message

    def press(self, message: dict[str, Any], data: str, *, user_id: int = 501) -> str:
        """A user presses the inline button with callback `data` under `message`; returns the query id."""
        current = self.messages.get((message["chat"]["id"], message["message_id"]), message)
        query_id = f"cq{next(self._update_ids)}"
        self.push_update(
            {
                "callback_query": {
                    "id": query_id,
                    "from": self.user(user_id),
                    "chat_instance": f"ci{message['chat']['id']}",
                    "data": data,
                    "message": current,
                }
            }
        )
        return query_id

    def fail_next(
        self, method: str, status: int = 500, times: int = 1, retry_after: int | None = None
    ) -> None:
        self._faults[method].extend(Fault(status=status, retry_after=retry_after) for _ in range(times))

    def stall_next(self, method: str, seconds: float, times: int = 1) -> None:
        self._faults[method].extend(Fault(stall_s=seconds) for _ in range(times))

    def delay_next(self, method: str, seconds: float, times: int = 1) -> None:
        self._faults[method].extend(Fault(delay_s=seconds) for _ in range(times))

    async def faults_used(self, timeout: float = 10.0) -> None:
        """Wait until every injected fault has hit a request."""
        if not await self._wait_until(lambda: not any(self._faults.values()), timeout):
            left = {m: len(f) for m, f in self._faults.items() if f}
            raise AssertionError(f"injected faults never hit a request within {timeout} s: {left}")

    # --- what a test checks -------------------------------------------------------------------

    def sent(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [c for c in self.calls if c.method == method and (chat_id is None or c.chat_id == chat_id)]

    async def wait_for(
        self,
        method: str,
        count: int = 1,
        *,
        where: Callable[[Call], bool] = lambda call: True,
        timeout: float = 10.0,
    ) -> list[Call]:
        """Wait until the bot has made `count` matching calls of `method`; returns them."""

        def matching() -> list[Call]:
            return [c for c in self.calls if c.method == method and where(c)]

        if not await self._wait_until(lambda: len(matching()) >= count, timeout):
            seen = [c.method for c in self.calls]
            raise AssertionError(
                f"the bot made {len(matching())} of {count} expected {method} calls within "
                f"{timeout} s; calls seen: {seen}"
            )
        return matching()

    @staticmethod
    def message_key(message: dict[str, Any]) -> str:
        """The `answers` key of the bot's replies to a user's message (in a group: quoted replies)."""
        return f"message:{message['chat']['id']}:{message['message_id']}"

    @staticmethod
    def query_key(query_id: str) -> str:
        """The `answers` key of the bot's answer to a button press."""
        return f"query:{query_id}"

    @staticmethod
    def answer_key(call: Call) -> str | None:
        if call.method == "answerCallbackQuery":
            return FakeTelegramServer.query_key(str(call.params["callback_query_id"]))
        if call.method == "answerInlineQuery":
            return FakeTelegramServer.inline_key(str(call.params["inline_query_id"]))
        reply = call.params.get("reply_parameters")
        if call.method in ("sendMessage", "sendPhoto", "sendMediaGroup") and isinstance(reply, dict):
            return f"message:{call.chat_id}:{reply['message_id']}"
        return None

    async def wait_answer(self, key: str, timeout: float = 10.0) -> list[Call] | None:
        """The bot's answers to `key` (see `message_key`, `query_key`) once there is one;
        None if there is none within `timeout`."""
        try:
            await asyncio.wait_for(self._answered[key].wait(), timeout)
        except TimeoutError:
            return None
        return self.answers[key]

    def message_of(self, call: Call) -> dict[str, Any]:
        """The message a sendPhoto/sendMessage call created (as the fake stores it now)."""
        return self.messages[(call.chat_id, call.params["_message_id"])]

    # --- the API --------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return condition()
        return True

    async def _read_params(self, request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
        params: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        if request.content_type == "application/json":
            params = await request.json()
        elif request.can_read_body:
            for name, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    files[name] = value.file.read()
                else:
                    params[name] = _decode(value)
        return params, files

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._error(401, "Unauthorized")
        method = request.match_info["method"]
        params, files = await self._read_params(request)
        faults = self._faults.get(method)
        if faults:
            fault = faults.popleft()
            self._notify()
            if fault.stall_s:
                await asyncio.sleep(fault.stall_s)  # the client gives up first: a lost request
                return self._error(504, "Gateway Timeout")
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            else:
                return self._error(fault.status, "Injected failure", fault.retry_after)
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            return self._error(404, f"Not Found: method {method} is not served by the fake")
        call = Call(method, params, files)
        try:
            result = await handler(call)
        except ApiError as exc:
            return self._error(exc.status, exc.description)
        if method != "getUpdates":  # polling is noise; tests wait on what the bot *sends*
            self.calls.append(call)
            key = self.answer_key(call)
            if key is not None:
                self.answers[key].append(call)
                self._answered[key].set()
            self._notify()
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        return web.json_response(body, status=status)

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        file_id = request.match_info["path"].rpartition("/")[2]
        if file_id not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[file_id], content_type="application/octet-stream")

    async def _api_getFile(self, call: Call) -> dict[str, Any]:
        file_id = str(call.params.get("file_id", ""))
        if file_id not in self.files:
            raise ApiError(400, "Bad Request: invalid file_id")
        size = len(self.files[file_id])
        if size > BOT_DOWNLOAD_LIMIT:
            raise ApiError(400, "Bad Request: file is too big")
        return {
            "file_id": file_id,
            "file_unique_id": file_id,
            "file_size": size,
            "file_path": f"files/{file_id}",
        }

    async def _api_getMe(self, call: Call) -> dict[str, Any]:
        return {**self.bot_user, "can_join_groups": True, "can_read_all_group_messages": False}

    async def _api_deleteWebhook(self, call: Call) -> bool:
        self.webhook = None
        if str(call.params.get("drop_pending_updates", "")).lower() == "true":
            self._updates.clear()
        return True

    async def _api_setWebhook(self, call: Call) -> bool:
        url = str(call.params.get("url") or "")
        if not url:  # the real server takes an empty url as deleteWebhook
            return await self._api_deleteWebhook(call)
        if not url.startswith("https://"):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        secret = call.params.get("secret_token")
        if secret is not None and not WEBHOOK_SECRET.fullmatch(str(secret)):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        if isinstance(call.params.get("allowed_updates"), list) and call.params["allowed_updates"]:
            self.allowed_updates = list(call.params["allowed_updates"])
        self.webhook = {"url": url, "secret_token": None if secret is None else str(secret)}
        if self._delivery is None:
            self._delivery = asyncio.create_task(self._deliver_updates(), name="fake-telegram-webhook")
        self._notify()
        return True

    async def post_update(self, update: dict[str, Any], secret: str | None) -> int:
        """POST one update to the bot's webhook as Telegram does, with `secret` in the
        X-Telegram-Bot-Api-Secret-Token header (None: no header); returns the HTTP status."""
        if self.webhook is None:
            raise AssertionError("no webhook is set: the bot has not called setWebhook")
        path = self.webhook["url"].removeprefix("https://").partition("/")[2]
        proxies = [self.webhook_proxy] if isinstance(self.webhook_proxy, str) else self.webhook_proxy
        proxy = proxies[next(self._proxy_turn) % len(proxies)] if any(proxies) else ""
        target = f"{proxy.rstrip('/')}/{path}" if proxy else self.webhook["url"]
        headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
        if self._http is None:
            self._http = aiohttp.ClientSession()
        async with self._http.post(target, json=update, headers=headers) as response:
            self.webhook_posts.append((update, proxy or target, response.status))
            return response.status

    async def _deliver_updates(self) -> None:
        """While a webhook is set, POST each queued update to it, several at a time as Telegram
        does (its max_connections), and record the answers."""
        while not self._closing:
            await self._wait_until(lambda: bool(self.webhook and self._updates) or self._closing, 3600)
            if self._closing or self.webhook is None:
                continue
            pending, self._updates = [u for u in self._updates if self._allowed(u)], []
            for update in pending:
                task = asyncio.create_task(self._post_one(update, self.webhook["secret_token"]))
                self._posts.add(task)
                task.add_done_callback(self._posts.discard)

    async def _post_one(self, update: dict[str, Any], secret: str | None) -> None:
        # Telegram retries a delivery that failed: a bot sets its webhook a moment before its
        # server listens (python-telegram-bot does), or a process behind the proxy restarts.
        # (Retries here are quick and few: a test should not wait long for a bot that is down.)
        status = 0
        for _ in range(WEBHOOK_ATTEMPTS):
            try:
                status = await self.post_update(update, secret)
            except aiohttp.ClientError:
                status = 0  # nothing listening (yet)
            if 0 < status < 500:
                break
            await asyncio.sleep(WEBHOOK_RETRY_S)
        self.webhook_statuses.append(status)
        self._notify()

    async def _api_getUpdates(self, call: Call) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise ApiError(409, WEBHOOK_CONFLICT)
        offset = int(call.params.get("offset") or 0)
        timeout = float(call.params.get("timeout") or 0)
        if isinstance(call.params.get("allowed_updates"), list) and call.params["allowed_updates"]:
            self.allowed_updates = list(call.params["allowed_updates"])  # the server remembers it
        # Updates below the offset are confirmed: the real server forgets them. Kinds the bot
        # did not ask for are never delivered (a bot that leaves out inline_query gets none).
        self._updates = [u for u in self._updates if u["update_id"] >= offset and self._allowed(u)]
        if timeout > 0:
            await self._wait_until(lambda: bool(self._updates) or self._closing, timeout)
            self._updates = [u for u in self._updates if self._allowed(u)]
        limit = int(call.params.get("limit") or 100)
        return self._updates[:limit]

    async def _api_setMyCommands(self, call: Call) -> bool:
        return True

    async def _api_sendChatAction(self, call: Call) -> bool:
        return True

    async def _api_answerCallbackQuery(self, call: Call) -> bool:
        return True

    async def _api_getChatMember(self, call: Call) -> dict[str, Any]:
        chat_id, user_id = int(call.params["chat_id"]), int(call.params["user_id"])
        status = self.members.get((chat_id, user_id), "member")
        member: dict[str, Any] = {"status": status, "user": _user(user_id)}
        if status == "creator":
            member["is_anonymous"] = False
        if status == "administrator":
            rights = (
                "can_be_edited is_anonymous can_manage_chat can_delete_messages can_manage_video_chats"
                " can_restrict_members can_promote_members can_change_info can_invite_users"
                " can_post_stories can_edit_stories can_delete_stories"
            )
            member.update({name: name == "can_manage_chat" for name in rights.split()})
        return member

    def _new_message(self, call: Call, content: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(call.params["chat_id"])
        message = {
            "message_id": next(self._message_ids[chat_id]),
            "date": int(time.time()),
            "chat": self.chat(chat_id),
            "from": self.bot_user,
            **content,
        }
        if call.params.get("reply_markup"):
            message["reply_markup"] = call.params["reply_markup"]
        reply = call.params.get("reply_parameters")
        if isinstance(reply, dict) and (chat_id, int(reply["message_id"])) in self.messages:
            message["reply_to_message"] = self.messages[(chat_id, int(reply["message_id"]))]
        self.messages[(chat_id, message["message_id"])] = message
        call.params["_message_id"] = message["message_id"]
        return message

    async def _api_sendMessage(self, call: Call) -> dict[str, Any]:
        return self._new_message(call, {"text": call.params["text"]})

    def _photo(self, media: Any, files: dict[str, bytes]) -> list[dict[str, Any]]:
        """A sent photo's sizes: an upload (stored under a new file_id), a part named by
        "attach://name", or the file_id of a file the server has; else the real server's 400."""
        if isinstance(media, str) and media.startswith("attach://"):
            media = files.get(media.removeprefix("attach://"))
        if isinstance(media, bytes):
            file_id = self.add_file(media, "sent")
        elif isinstance(media, str) and media in self.files:
            file_id = media  # sent again by file_id: the same file, nothing uploaded
        else:
            raise ApiError(400, WRONG_FILE if media else "Bad Request: there is no photo in the request")
        size = len(self.files[file_id])
        return [
            {"file_id": file_id, "file_unique_id": file_id, "width": 800, "height": 800, "file_size": size}
        ]

    async def _api_sendPhoto(self, call: Call) -> dict[str, Any]:
        photo = self._photo(call.files.get("photo", call.params.get("photo")), call.files)
        content: dict[str, Any] = {"photo": photo}
        if call.params.get("caption"):
            content["caption"] = call.params["caption"]
        return self._new_message(call, content)

    async def _api_sendMediaGroup(self, call: Call) -> list[dict[str, Any]]:
        media = call.params.get("media")
        if not isinstance(media, list) or len(media) not in MEDIA_GROUP_SIZES:
            raise ApiError(400, "Bad Request: a media group must have 2 to 10 items")
        if any(not isinstance(item, dict) or item.get("type") != "photo" for item in media):
            raise ApiError(400, "Bad Request: this fake serves media groups of photos only")
        photos = [self._photo(item.get("media"), call.files) for item in media]  # all checked first
        group = f"group-{next(self._update_ids)}"
        sent = []
        for item, photo in zip(media, photos, strict=True):
            content: dict[str, Any] = {"photo": photo, "media_group_id": group}
            if item.get("caption"):
                content["caption"] = item["caption"]
            sent.append(self._new_message(call, content))
        call.params["_message_ids"] = [m["message_id"] for m in sent]
        return sent

    async def _api_deleteMessage(self, call: Call) -> bool:
        key = (int(call.params["chat_id"]), int(call.params["message_id"]))
        message = self.messages.get(key)
        if message is None:
            raise ApiError(400, "Bad Request: message to delete not found")
        own = message.get("from", {}).get("id") == BOT_ID
        # Others' messages: in a private chat, or in a group where the bot is an admin.
        private = self.chat(key[0])["type"] == "private"
        may_delete_others = private or self.members.get((key[0], BOT_ID)) in ADMIN_STATUSES
        if not (own or may_delete_others) or time.time() - message["date"] > BOT_DELETE_WINDOW_S:
            raise ApiError(400, "Bad Request: message can't be deleted")
        del self.messages[key]
        return True

    async def _api_editMessageReplyMarkup(self, call: Call) -> dict[str, Any] | bool:
        if call.params.get("inline_message_id"):
            return self._edit_inline_markup(call)
        key = (int(call.params["chat_id"]), int(call.params["message_id"]))
        if key not in self.messages:
            raise ApiError(400, "Bad Request: message to edit not found")
        message = self.messages[key]
        if call.params.get("reply_markup"):
            message["reply_markup"] = call.params["reply_markup"]
        else:
            message.pop("reply_markup", None)
        return message

    # --- inline mode ---------------------------------------------------------------------------

    @staticmethod
    def inline_key(query_id: str) -> str:
        """The `answers` key of the bot's answer to an inline query."""
        return f"inline:{query_id}"

    def _allowed(self, update: dict[str, Any]) -> bool:
        kinds = [k for k in update if k != "update_id"]
        return not self.allowed_updates or all(k in self.allowed_updates for k in kinds)

    def send_inline_query(self, query: str, *, user_id: int = 501, chat_type: str = "supergroup") -> str:
        """A user types `@bot query` in a chat of `chat_type`; returns the inline query's id."""
        query_id = f"iq{next(self._update_ids)}"
        self.inline_queries[query_id] = InlineQuery(query_id, user_id, query)
        self.push_update(
            {
                "inline_query": {
                    "id": query_id,
                    "from": self.user(user_id),
                    "query": query,
                    "offset": "",
                    "chat_type": chat_type,
                }
            }
        )
        return query_id

    async def wait_inline_answer(self, query_id: str, timeout: float = 10.0) -> InlineQuery:
        """The query once the bot has answered it (AssertionError if it does not in time)."""
        if await self.wait_answer(self.inline_key(query_id), timeout) is None:
            raise AssertionError(f"inline query {query_id} was not answered within {timeout} s")
        return self.inline_queries[query_id]

    def choose_inline_result(
        self, query_id: str, result_id: str, *, user_id: int | None = None
    ) -> str | None:
        """The user taps one of the answer's results: it is sent to their chat. Returns its
        inline_message_id, which Telegram gives only for a result with a keyboard (the bot can
        edit only those). The bot hears of it as chosen_inline_result when inline feedback is on."""
        query = self.inline_queries[query_id]
        chosen = [r for r in query.results if r.get("id") == result_id]
        assert chosen, f"the answer to {query_id} has no result {result_id!r}: {query.results}"
        result = chosen[0]
        inline_message_id = None
        if result.get("reply_markup"):
            inline_message_id = f"im{next(self._update_ids)}"
            self.inline_messages[inline_message_id] = {
                "photo": result.get("photo_file_id"),
                "reply_markup": result["reply_markup"],
            }
        if self.inline_feedback:
            payload: dict[str, Any] = {
                "result_id": result_id,
                "from": self.user(query.user_id if user_id is None else user_id),
                "query": query.query,
            }
            if inline_message_id is not None:
                payload["inline_message_id"] = inline_message_id
            self.push_update({"chosen_inline_result": payload})
        return inline_message_id

    def press_inline(self, inline_message_id: str, data: str, *, user_id: int = 501) -> str:
        """A user presses a button under a message sent through the bot: the callback query has
        the inline_message_id and no message (the bot may not even be in that chat)."""
        assert inline_message_id in self.inline_messages, f"no inline message {inline_message_id}"
        query_id = f"cq{next(self._update_ids)}"
        self.push_update(
            {
                "callback_query": {
                    "id": query_id,
                    "from": self.user(user_id),
                    "chat_instance": f"ci-{inline_message_id}",
                    "data": data,
                    "inline_message_id": inline_message_id,
                }
            }
        )
        return query_id

    @staticmethod
    def inline_buttons(message: dict[str, Any]) -> list[str]:
        """An inline message's buttons as a user reads them."""
        rows = (message.get("reply_markup") or {}).get("inline_keyboard", [])
        return [button["text"] for row in rows for button in row]

    @staticmethod
    def _check_keyboard(markup: Any) -> None:
        rows = markup.get("inline_keyboard", []) if isinstance(markup, dict) else []
        for row in rows:
            for button in row:
                data = button.get("callback_data")
                if data is not None and not 1 <= len(str(data).encode()) <= MAX_ID_BYTES:
                    raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")

    async def _api_answerInlineQuery(self, call: Call) -> bool:
        query = self.inline_queries.get(str(call.params.get("inline_query_id")))
        late = query is not None and time.monotonic() - query.at > self.inline_answer_deadline_s
        if query is None or query.answer is not None or late:
            raise ApiError(400, QUERY_INVALID)  # unknown, answered already, or too late
        results = call.params.get("results")
        if not isinstance(results, list):
            raise ApiError(400, "Bad Request: results must be a JSON array")
        if len(results) > MAX_INLINE_RESULTS:
            raise ApiError(400, "Bad Request: RESULTS_TOO_MUCH")
        ids: set[str] = set()
        for result in results:
            result_id = result.get("id") if isinstance(result, dict) else None
            if not isinstance(result_id, str) or not 1 <= len(result_id.encode()) <= MAX_ID_BYTES:
                raise ApiError(400, "Bad Request: RESULT_ID_INVALID")
            if result_id in ids:
                raise ApiError(400, "Bad Request: RESULT_ID_DUPLICATE")
            ids.add(result_id)
            self._check_result(result)
        cache_time = call.params.get("cache_time")
        if cache_time is not None and not (str(cache_time).isdigit()):
            raise ApiError(400, "Bad Request: cache_time must be a non-negative integer")
        button = call.params.get("button")
        if button is not None:
            if not isinstance(button, dict) or not button.get("text"):
                raise ApiError(400, "Bad Request: the button needs a text")
            if "web_app" not in button and not START_PARAMETER.fullmatch(
                str(button.get("start_parameter", ""))
            ):
                raise ApiError(400, "Bad Request: BOT_START_PARAM_INVALID")
        if len(str(call.params.get("next_offset", "")).encode()) > MAX_ID_BYTES:
            raise ApiError(400, "Bad Request: NEXT_OFFSET_INVALID")
        query.answer = call
        return True

    def _check_result(self, result: dict[str, Any]) -> None:
        kind = result.get("type")
        if kind == "photo":
            file_id = result.get("photo_file_id")
            if file_id is None:
                raise ApiError(400, "Bad Request: this fake serves cached photos (photo_file_id) only")
            if file_id not in self.files:
                raise ApiError(400, WRONG_FILE)
        elif kind == "article":
            content = result.get("input_message_content") or {}
            if not result.get("title") or not content.get("message_text"):
                raise ApiError(400, "Bad Request: an article needs a title and input_message_content")
        else:
            raise ApiError(400, f"Bad Request: this fake serves photo and article results, not {kind!r}")
        self._check_keyboard(result.get("reply_markup"))

    def _inline_message(self, call: Call) -> dict[str, Any]:
        message = self.inline_messages.get(str(call.params.get("inline_message_id")))
        if message is None:
            raise ApiError(400, "Bad Request: MESSAGE_ID_INVALID")
        return message

    def _edit_inline_markup(self, call: Call) -> bool:
        message = self._inline_message(call)
        markup = call.params.get("reply_markup") or None
        self._check_keyboard(markup)
        if markup == message.get("reply_markup"):
            raise ApiError(400, NOT_MODIFIED)
        message["reply_markup"] = markup
        return True

    async def _api_editMessageMedia(self, call: Call) -> bool:
        if not call.params.get("inline_message_id"):
            raise ApiError(400, "Bad Request: this fake serves editMessageMedia for inline messages only")
        message = self._inline_message(call)
        media = call.params.get("media")
        if not isinstance(media, dict) or media.get("type") != "photo":
            raise ApiError(400, "Bad Request: this fake serves photos only")
        file_id = media.get("media")
        if call.files or not isinstance(file_id, str) or file_id.startswith("attach://"):
            # The Bot API: "When an inline message is edited, a new file can't be uploaded".
            raise ApiError(400, "Bad Request: can't upload a new file for an inline message")
        if file_id not in self.files:
            raise ApiError(400, WRONG_FILE)
        markup = call.params.get("reply_markup") or None
        self._check_keyboard(markup)
        message["photo"] = file_id
        message["reply_markup"] = markup  # an edit without a keyboard takes the keyboard off
        return True
