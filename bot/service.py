"""The platform-neutral core of the bot: make, reroll, rate and caption memes; settings.

Front ends (Telegram, Discord, the console) only translate their platform's events into
calls on `MemeService` and its results back into messages. Nothing here knows about any
chat platform: who may change settings is decided by the adapter (`ChatContext.is_admin`),
and every refusal is a typed `MemeError` that carries its data (the template, the setting,
the word). Its `user_message` is a platform-free default; an error whose advice names a
command's syntax or a platform's roles is worded by each front end (`Wording`, `error_text`).
Settings are bot/settings.py's table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import logging
import math
import random
import string
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

from bot.errors import (
    AdminOnlyError,
    BadInputError,
    BadPictureError,
    BadSettingError,
    BannedWordError,
    BoxCountError,
    BusyError,
    CooldownError,
    GenerationError,
    MemeError,
    MissingCaptionError,
    MissingTemplateError,
    NoModelError,
    NoSuchMemeError,
    NotAMemeMessageError,
    NoTemplatesEnabledError,
    NotYourMemeError,
    PictureGoneError,
    SettingsUsageError,
    TemplateNotEnabledError,
    UnknownMemeError,
    UnknownSettingError,
    UnknownTemplateError,
)
from bot.inputs import clean_boxes, clean_text, with_typed_prefix
from bot.memes import (
    HANDWRITTEN,
    MAX_MEME_ID,
    Candidate,
    ChatContext,
    ForgottenMeme,
    Found,
    Leaderboard,
    LeaderboardEntry,
    MadeMeme,
    MemeDraft,
    MemeOptions,
    Period,
    Picture,
    Recognizer,
    find_period,
)
from bot.ratelimit import Cooldown, TokenBucket
from bot.render import RenderedMeme, Renderer, box_count_error
from bot.settings import (
    SETTINGS,
    BadValue,
    ChatSettings,
    Setting,
    check_value,
    effective,
    find_setting,
    parse_value,
)
from bot.storage import USER_HASH_HEX, NewMeme, NotAuthor, Score, Storage, StoredMeme, UnknownMeme
from common.catalog import Catalog, UnknownTemplate
from common.config import Config
from common.content_filter import ContentFilter
from common.template import CaptionPlan, ImageError, Template, is_upload_key
from model.pool import InvalidRequest, ModelPool, PoolBusy, PoolError, PoolTimeout
from model.requests import PICK_AMONG, GenerationRequest, TemplateScores, choose_template

if TYPE_CHECKING:
    from model.remote import RemoteModel  # aiohttp: loaded only where [model] endpoint is set

MAX_TEMPLATE_QUERY = 100  # characters; longer is not a template name
MAX_HISTORY = 50
LEADERBOARD_SIZE = 5  # memes a /top shows unless told otherwise
MAX_LEADERBOARD = 10
MAX_AUTHOR_NAME = 64  # characters of a display name kept with a meme
MAX_CANDIDATES = 10  # memes one meme_candidates call makes at the most
# The start of a text the model reads to pick a template: enough to tell (a pick's cost grows
# with the text: ~0.4 s for 30 characters on 2 cores), not a whole essay.
MAX_PICK_CHARS = 80
# Pictures users sent lately, kept in memory for 🔁 (about 100 MB of photos at the most).
RECENT_PICTURES = 64
logger = logging.getLogger(__name__)
# Keys in a meme's stored params: the best-of-N runners-up (best first) that 🔁 serves next, and,
# in a meme served from them, the id of the meme that keeps them.
CANDIDATES = "candidates"
REROLL_OF = "reroll_of"

# --- the service's own -----------------------------------------------------------------------


class NoCandidateLeft(Exception):
    """Inside the service: the best-of-N candidate a 🔁 meant to serve was taken meanwhile."""


def _looks_hashed(chat_id: str) -> bool:
    """A stored chat id that is a keyed hash (a private chat's): platforms' own chat ids are
    numbers far shorter than the hash."""
    return len(chat_id) == USER_HASH_HEX and all(c in string.hexdigits for c in chat_id)


def _stored_candidates(params: dict[str, Any]) -> list[list[str]]:
    """The runners-up kept with a meme (see CANDIDATES); [] for anything malformed."""
    value = params.get(CANDIDATES)
    if not isinstance(value, list):
        return []
    return [list(c) for c in value if isinstance(c, list) and c and all(isinstance(b, str) for b in c)]


# --- the service ------------------------------------------------------------------------------


class MemeService:
    """One per process, shared by every front end (one pool, one database)."""

    def __init__(
        self,
        *,
        config: Config,
        catalog: Catalog,
        renderer: Renderer,
        storage: Storage,
        pool: ModelPool | RemoteModel | None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        recognizer: Recognizer | None = None,
    ) -> None:
        # pool=None: no model is installed; hand-written captions still work. A RemoteModel
        # ([model] endpoint) has the pool's methods and errors: nothing below tells them apart.
        self.config = config
        self.catalog = catalog
        self.renderer = renderer
        self.storage = storage
        self.pool = pool
        self._rng = rng or random.Random()
        limits = config.limits
        self._user_limit = TokenBucket(limits.user_rate_per_minute, limits.user_burst, clock)
        self._chat_limit = TokenBucket(limits.chat_rate_per_minute, limits.chat_burst, clock)
        self._cooldown = Cooldown(clock)
        self.filter = ContentFilter.from_config(config.filter)
        self.recognizer = recognizer
        self._pictures: OrderedDict[str, Template] = OrderedDict()  # slug -> picture, newest last

    @property
    def has_model(self) -> bool:
        return self.pool is not None

    # --- memes ---

    async def make_meme(
        self,
        ctx: ChatContext,
        template: str | Template | Picture | None,
        prefix: str = "",
        options: MemeOptions | None = None,
    ) -> MadeMeme:
        """A model-captioned meme on `template`: what the user typed to name one, a picture they
        sent (the catalog template it shows, if recognised), or a Template value. None (or "")
        with a prefix: the model picks the template the prefix fits (Found "picked"); without
        one, a random template."""
        options = options or MemeOptions()
        prefix = clean_text(prefix)
        if len(prefix) > self.config.limits.max_prefix_chars:
            raise BadInputError(
                f"That start of a caption is too long: keep it under {self.config.limits.max_prefix_chars} characters."
            )
        if self.pool is None:
            raise NoModelError()
        settings = await self._settings(ctx)
        pick = not template and any(c.isalnum() for c in prefix)
        chosen: Template | None = None
        if pick:  # which templates could take it is known now; the model's choice costs a turn
            candidates = self._pick_candidates(prefix, settings)
            found = None
        else:
            chosen, found = await self._resolve_template(template, settings)
            self._check_box_count(chosen, prefix.count("|") + 1 if prefix else 0)
        if self._with_options(settings, options).filter_enabled:
            self._refuse_banned(prefix, "That start of a caption")
        with self._turn(ctx, settings):  # a pick is model time too: it is charged with the caption
            if chosen is None:
                chosen, found = await self._pick_template(prefix, candidates)
            plan = chosen.caption_plan(prefix, self._rng)
            request = self._request(chosen, plan, settings, options)
            candidates = [plan.arrange(boxes) for boxes in await self._generate_clean(request)]
        # As typed, emoji and all (the plan's prefix is theirs, after the template's opening if any).
        candidates = [with_typed_prefix(plan.prefix, boxes) for boxes in candidates]
        params = self._params_of(request)
        if len(candidates) > 1:
            # Best of N: the runners-up, best first, for 🔁 on this meme (see reroll).
            params[CANDIDATES] = candidates[1:]
        made = await self._finish(
            ctx,
            settings,
            chosen,
            candidates[0],
            prefix,
            request.method,
            params,
            self.pool.model_id,
            options.uppercase,
        )
        return dataclasses.replace(made, found=found)

    async def reroll(self, ctx: ChatContext, meme_id: int) -> MadeMeme:
        """A new meme on the same template and prefix. When the meme came from a best-of-N
        request, the next best candidate that is left; once they are used up (or for any other
        meme), a fresh caption. It always samples: greedy or beam search would only repeat the
        caption being rerolled.

        The candidates stay with the meme they were made for (its stored params), and each
        meme served from them names it (`reroll_of`), so 🔁 on any meme of the chain takes the
        next one from the same list and never shows one twice."""
        stored = await self.storage.get_meme(meme_id) if 0 < meme_id <= MAX_MEME_ID else None
        if stored is None:
            raise UnknownMemeError(meme_id)
        root = stored.params.get(REROLL_OF, stored.id)
        if isinstance(root, int) and not isinstance(root, bool) and 0 < root <= MAX_MEME_ID:
            made = await self._next_candidate(ctx, stored, root)
            if made is not None:
                return made
        template = await self._stored_template(stored.template)
        return await self.make_meme(ctx, template, stored.prefix, MemeOptions(method="sample"))

    async def _next_candidate(self, ctx: ChatContext, stored: StoredMeme, root: int) -> MadeMeme | None:
        """The meme of the next best-of-N candidate kept with meme `root`, or None."""
        if root != stored.id:
            origin = await self.storage.get_meme(root)
            if origin is None:
                return None
        else:
            origin = stored
        if not _stored_candidates(origin.params):
            return None
        settings = await self._settings(ctx)
        template, _ = await self._resolve_template(await self._stored_template(stored.template), settings)
        filtered = settings.filter_enabled

        def usable(boxes: object) -> bool:
            if not (isinstance(boxes, list) and boxes and all(isinstance(b, str) for b in boxes)):
                return False
            # Kept before the chat switched its filter on, perhaps: checked again.
            return boxes != stored.boxes and not (
                filtered and self.filter.find(" | ".join(boxes)) is not None
            )

        if not any(usable(c) for c in _stored_candidates(origin.params)):
            return None
        try:
            with self._turn(ctx, settings):
                while True:
                    try:
                        boxes = await self.storage.pop_param_item(root, CANDIDATES)
                    except UnknownMeme:
                        raise NoCandidateLeft from None
                    if boxes is None:
                        raise NoCandidateLeft  # another reroll took the last one meanwhile
                    if usable(boxes):
                        break
        except NoCandidateLeft:
            return None  # the turn was given back: the fresh caption the caller makes charges it
        params = {k: v for k, v in origin.params.items() if k != CANDIDATES}
        params[REROLL_OF] = root
        uppercase = params.get("uppercase")  # drawn in the style of the meme it stands in for
        return await self._finish(
            ctx,
            settings,
            template,
            boxes,
            origin.prefix,
            origin.method,
            params,
            origin.model_id,
            uppercase if isinstance(uppercase, bool) else None,
        )

    async def caption(
        self, ctx: ChatContext, template: str | Template | Picture, boxes: list[str]
    ) -> MadeMeme:
        """A meme with the user's own text in its boxes; needs no model."""
        boxes = clean_boxes(boxes)
        if not boxes:
            raise MissingCaptionError()
        if sum(len(box) for box in boxes) > self.config.limits.max_caption_chars:
            raise BadInputError(
                f"That caption is too long: keep it under {self.config.limits.max_caption_chars} characters."
            )
        if isinstance(template, str) and not template.strip():
            raise MissingTemplateError()
        settings = await self._settings(ctx)
        chosen, found = await self._resolve_template(template, settings)
        self._check_box_count(chosen, len(boxes))
        if settings.filter_enabled:
            self._refuse_banned(" | ".join(boxes), "That caption")
        with self._turn(ctx, settings):
            made = await self._finish(ctx, settings, chosen, boxes, "", HANDWRITTEN, {}, HANDWRITTEN, None)
        return dataclasses.replace(made, found=found)

    async def rate(self, ctx: ChatContext, meme_id: int, value: int) -> Score:
        """Vote +1 or -1; the same vote again withdraws it. Returns the meme's new score."""
        if isinstance(value, bool) or value not in (-1, 1):
            raise BadInputError("Rate with 👍 or 👎.")
        if not 0 < meme_id <= MAX_MEME_ID:
            raise UnknownMemeError(meme_id)
        try:
            return await self.storage.rate(meme_id, ctx.platform, ctx.user_id, value)
        except UnknownMeme:
            raise UnknownMemeError(meme_id) from None

    async def attach_message(self, meme_id: int, message_id: str, media_ref: str | None = None) -> None:
        """Remember which platform message shows the meme, and what shows its image again without
        rendering it (`media_ref`: Telegram's file_id of the sent photo), for leaderboards."""
        if not 0 < meme_id <= MAX_MEME_ID:
            raise UnknownMemeError(meme_id)
        try:
            await self.storage.set_message_id(meme_id, message_id, media_ref)
        except UnknownMeme:
            raise UnknownMemeError(meme_id) from None

    def split_template(self, text: str) -> tuple[str | None, str]:
        """What a user typed after /meme -> (the template its first word names, the caption's
        start); (None, all of it) when the first word is no template (catalog.named: a whole
        name, alias or a close typo), so the model picks one for the whole text."""
        first, _, rest = text.strip().partition(" ")
        if not first:
            return None, ""
        if self.catalog.named(first[:MAX_TEMPLATE_QUERY]) is not None:
            return first, rest.strip()
        return None, text.strip()

    def templates(self, query: str = "", limit: int = 25) -> list[Template]:
        return self.catalog.search(
            clean_text(query[: MAX_TEMPLATE_QUERY * 4])[:MAX_TEMPLATE_QUERY],
            max(1, min(limit, len(self.catalog.templates))),
        )

    async def history(self, ctx: ChatContext, n: int = 10) -> list[StoredMeme]:
        """The user's last `n` memes on this platform, newest first."""
        return await self.storage.user_history(ctx.platform, ctx.user_id, max(1, min(n, MAX_HISTORY)))

    # --- several memes to choose from (Telegram's inline mode) ---

    async def meme_candidates(
        self, ctx: ChatContext, template: str | None, prefix: str = "", n: int = 5
    ) -> list[Candidate]:
        """Up to `n` memes for one request, best first, rendered but not stored, for a front end
        that lets the user choose one (`keep` stores the chosen one). `template` and `prefix` are
        what `split_template` gives:
        - a template and words: the words as written (no model) first, then the model's
          completions of them;
        - a template alone: the model's best-of-N captions on it;
        - words without a template: the templates the model picks for them (`_pick_template`:
          the drawn one, then the alternatives), their captions taken in turn.
        All of it costs one turn of the rate limits, like one meme. Where the model is busy or
        fails and the user wrote words, their own words are still offered."""
        n = max(1, min(n, MAX_CANDIDATES))
        prefix = clean_text(prefix)
        limit = self.config.limits.max_prefix_chars
        if len(prefix) > limit:
            raise BadInputError(f"That start of a caption is too long: keep it under {limit} characters.")
        settings = await self._settings(ctx)
        named = self._choose_template(template, settings) if template else None
        if named is not None:
            self._check_box_count(named, prefix.count("|") + 1 if prefix else 0)
        if settings.filter_enabled:
            self._refuse_banned(prefix, "That caption")
        drafts: list[MemeDraft] = []
        own_words = clean_boxes(prefix.split("|")) if named is not None else []
        if named is not None and own_words:
            drafts.append(MemeDraft(named, tuple(own_words), "", HANDWRITTEN, {}, HANDWRITTEN))
        if self.pool is None and not drafts:
            raise NoModelError()
        with self._turn(ctx, settings):
            if self.pool is not None:
                try:
                    drafts += await self._model_drafts(named, prefix, settings, n - len(drafts))
                except (BusyError, GenerationError) as exc:
                    if not drafts:
                        raise
                    logger.info("no model captions to offer (%s); the user's own words only", exc)
        # The same caption twice (short sampled captions repeat) is one choice, not two.
        seen: set[tuple[str, tuple[str, ...]]] = set()
        unique = []
        for draft in drafts:
            if (draft.template.slug, draft.boxes) not in seen:
                seen.add((draft.template.slug, draft.boxes))
                unique.append(draft)
        images = await asyncio.to_thread(self._render_drafts, unique)
        return [Candidate(draft, image) for draft, image in zip(unique, images, strict=True)]

    async def keep(
        self, ctx: ChatContext, draft: MemeDraft, message_id: str | None = None, media_ref: str | None = None
    ) -> int:
        """Store a draft the user chose, like any meme, with the message that shows it and what
        shows its image again (see `attach_message`); returns the meme's id. No turn is charged:
        the draft was, when it was made."""
        settings = await self._settings(ctx)
        meme_id = await self.storage.record_meme(
            NewMeme(
                platform=ctx.platform,
                chat_id=self._stored_chat(ctx),
                user_id=ctx.user_id,
                template=draft.template,
                prefix=draft.prefix,
                boxes=list(draft.boxes),
                method=draft.method,
                params=dict(draft.params),
                model_id=draft.model_id,
                keep_picture=settings.keep_pictures,
                scope_id=self._stored_scope(ctx),
                author_name=self._author_name(ctx),
            )
        )
        if message_id is not None:
            await self.storage.set_message_id(meme_id, message_id, media_ref)
        return meme_id

    async def made_by(self, ctx: ChatContext, meme_id: int) -> bool:
        """Whether the asker made meme `meme_id` (UnknownMemeError when there is no such meme)."""
        stored = await self.storage.get_meme(meme_id) if 0 < meme_id <= MAX_MEME_ID else None
        if stored is None:
            raise UnknownMemeError(meme_id)
        return stored.user_hash == self.storage.user_hash(ctx.platform, ctx.user_id)

    async def popular_templates(self, ctx: ChatContext, n: int) -> list[Template]:
        """The `n` most used templates the model knows (catalog order) that this chat allows."""
        allowed = (await self._settings(ctx)).allowed_templates
        chosen = [t for t in self.catalog.templates if t.has_data and (allowed is None or t.slug in allowed)]
        return chosen[: max(0, n)]

    async def blank(self, template: Template) -> RenderedMeme:
        """The template with no caption, as a meme of it would be drawn (size, format)."""
        return await asyncio.to_thread(self.renderer.render, template, [])

    async def _model_drafts(
        self, named: Template | None, prefix: str, settings: ChatSettings, n: int
    ) -> list[MemeDraft]:
        """At most `n` model captions: on `named`, else on the templates picked for the prefix
        (a random one when it has no words to pick by), each template's best first, in turn."""
        assert self.pool is not None
        if n <= 0:
            return []
        picked: Found | None = None
        if named is not None:
            templates = [named]
        elif any(c.isalnum() for c in prefix):
            chosen, picked = await self._pick_template(prefix, self._pick_candidates(prefix, settings))
            templates = [chosen, *picked.alternatives]
        else:
            templates = [self._choose_template(None, settings)]
            self._check_box_count(templates[0], prefix.count("|") + 1 if prefix else 0)
        per_template = math.ceil(n / len(templates))
        requests, plans = [], []
        for template in templates:
            # Several captions from one request: only sampling has more than one (best of N).
            # The chat's N is shared among the templates, so the whole costs about one meme.
            plans.append(template.caption_plan(prefix, self._rng))
            request = self._request(template, plans[-1], settings, MemeOptions(method="sample"))
            share = math.ceil(request.best_of / len(templates))
            requests.append(dataclasses.replace(request, best_of=max(share, per_template)))
        answers = await asyncio.gather(*(self._generate_clean(r) for r in requests), return_exceptions=True)
        made = [
            (t, r, [plan.arrange(boxes) for boxes in a], plan)
            for t, r, plan, a in zip(templates, requests, plans, answers, strict=True)
            if isinstance(a, list)
        ]
        failures = [a for a in answers if isinstance(a, BaseException)]
        for failure in failures:
            if not isinstance(failure, MemeError):
                raise failure  # a bug, not the model being busy: not to be hidden by the others
        if not made:
            raise failures[0]
        rows: list[list[MemeDraft]] = []
        for template, request, captions, plan in made:
            typed = [tuple(with_typed_prefix(plan.prefix, boxes)) for boxes in captions]
            found = None if picked is None else Found("picked", tuple(t for t in templates if t != template))
            row = []
            for boxes in typed:
                params = self._params_of(request)
                others = [list(b) for b in typed if b != boxes]
                if others:
                    params[CANDIDATES] = others  # for 🔁 on the meme once it is kept (see reroll)
                row.append(
                    MemeDraft(template, boxes, prefix, request.method, params, self.pool.model_id, found)
                )
            rows.append(row)
        in_turn = [draft for rank in itertools.zip_longest(*rows) for draft in rank if draft is not None]
        return in_turn[:n]

    @staticmethod
    def _params_of(request: GenerationRequest) -> dict[str, Any]:
        """The settings a caption was made with, as make_meme stores them with its meme."""
        return {
            "temperature": request.temperature,
            "top_k": request.top_k,
            "top_p": request.top_p,
            "beam_width": request.beam_width,
            "max_length": request.max_length,
            "lexicon": request.lexicon,
            "best_of": request.best_of,
        }

    def _render_drafts(self, drafts: list[MemeDraft]) -> list[RenderedMeme]:
        """CPU work: runs in a worker thread."""
        return [self.renderer.render(d.template, list(d.boxes)) for d in drafts]

    # --- leaderboards, forgetting ---

    async def leaderboard(
        self, ctx: ChatContext, period: str | Period = "", n: int = LEADERBOARD_SIZE
    ) -> Leaderboard:
        """This chat's best memes (a Discord server's, across its channels) made in `period`
        (what the user typed, see PERIODS; "" is the last week): score first, then more
        up-votes, then newer. Memes with no more 👍 than 👎, and memes whose message was found
        deleted, are left out. Each entry has what a front end needs to show the meme again."""
        chosen = period if isinstance(period, Period) else find_period(period)
        since = None if chosen.days is None else self.storage.now() - timedelta(days=chosen.days)
        memes = await self.storage.top_memes(
            ctx.platform, self._stored_scope(ctx), since, max(1, min(n, MAX_LEADERBOARD))
        )
        entries: list[LeaderboardEntry] = []
        for position, meme in enumerate(memes, 1):
            # Competition ranking: a tie on score and up-votes shares the rank (1, 2, 2, 4).
            key = (meme.score.value, meme.up)
            tied = bool(entries) and (entries[-1].meme.score.value, entries[-1].meme.up) == key
            rank = entries[-1].rank if tied else position
            entries.append(LeaderboardEntry(rank, meme, self._platform_chat(ctx, meme.chat_id)))
        return Leaderboard(chosen, tuple(entries))

    async def message_deleted(self, meme_id: int) -> None:
        """A front end found the meme's message deleted (a moderator took it down): it leaves
        the leaderboards, so /top does not bring it back."""
        if 0 < meme_id <= MAX_MEME_ID:
            await self.storage.set_message_deleted(meme_id)

    async def forget(self, ctx: ChatContext, meme_id: int) -> ForgottenMeme:
        """Delete one of the asker's own memes, with its votes: it leaves their history, the
        leaderboards and exports. Someone else's meme is refused (NotYourMemeError)."""
        if not 0 < meme_id <= MAX_MEME_ID:
            raise NoSuchMemeError(meme_id)
        try:
            meme = await self.storage.delete_meme(meme_id, ctx.platform, ctx.user_id)
        except UnknownMeme:
            raise NoSuchMemeError(meme_id) from None
        except NotAuthor:
            raise NotYourMemeError(meme_id) from None
        # A picture held in memory for 🔁 goes too (even if another meme shows it: forgetting
        # is the user asking for it to be gone; 🔁 there asks them to send it again).
        self._pictures.pop(meme.template, None)
        return ForgottenMeme(meme.id, self._platform_chat(ctx, meme.chat_id), meme.message_id)

    async def meme_at(self, ctx: ChatContext, message_id: str) -> int:
        """The id of the meme a message in this chat shows (e.g. the one a command replies to);
        NotAMemeMessageError when it shows none."""
        meme = await self.storage.meme_at(ctx.platform, self._stored_chat(ctx), message_id)
        if meme is None:
            raise NotAMemeMessageError()
        return meme.id

    def _platform_chat(self, ctx: ChatContext, stored_chat: str) -> str | None:
        """A meme's chat id as the platform knows it, from the stored one: a private chat's is
        stored hashed, so it is known only when it is the asker's chat."""
        if stored_chat == self._stored_chat(ctx):
            return ctx.chat_id
        return None if _looks_hashed(stored_chat) else stored_chat

    def _author_name(self, ctx: ChatContext) -> str:
        """The display name kept with a new meme, for leaderboards. None ("") in a private chat:
        its board is the author's own, and the chat itself is stored only as a hash."""
        if ctx.is_private:
            return ""
        return clean_text(ctx.user_name)[:MAX_AUTHOR_NAME]

    # --- settings ---

    async def get_settings(self, ctx: ChatContext) -> ChatSettings:
        """The settings in effect for this chat: its own where set, else the config's."""
        return await self._settings(ctx)

    async def set_settings(self, ctx: ChatContext, changes: Mapping[str, str]) -> ChatSettings:
        """Parse and store changes typed by a user ({setting or alias: value text}); a reset
        word ("default") clears a setting. Returns the settings then in effect."""
        if not ctx.is_admin:
            raise AdminOnlyError()
        cleaned = {clean_text(key).strip(): clean_text(value).strip() for key, value in changes.items()}
        cleaned.pop("", None)
        if not cleaned:
            raise SettingsUsageError()
        parsed: dict[str, Any] = {}
        for key, text in cleaned.items():
            spec = find_setting(key)
            if spec is None:
                raise UnknownSettingError(key)
            parsed[spec.name] = self._parse_setting(spec, text)
        stored = await self.storage.set_settings(ctx.platform, self._stored_scope(ctx), **parsed)
        return effective(self.config, stored)

    # --- privacy ---

    def _stored_chat(self, ctx: ChatContext) -> str:
        """The chat id as stored: a private chat's id is its user's id (on Telegram exactly),
        so it gets the same keyed hash as user ids; nothing in the database names a person."""
        return self.storage.user_hash(ctx.platform, ctx.chat_id) if ctx.is_private else ctx.chat_id

    def _stored_scope(self, ctx: ChatContext) -> str:
        return ctx.scope_id or self._stored_chat(ctx)

    async def _settings(self, ctx: ChatContext) -> ChatSettings:
        """The settings in effect: the chat's own over the config's defaults."""
        return effective(self.config, await self.storage.get_settings(ctx.platform, self._stored_scope(ctx)))

    def _parse_setting(self, spec: Setting, text: str) -> Any:
        """A value a user typed -> the setting's value; None: back to the default."""
        if not text:
            raise BadSettingError(spec, "")
        try:
            return parse_value(spec, text, self.catalog)
        except UnknownTemplate as exc:
            raise UnknownTemplateError(str(exc), list(exc.suggestions)) from None
        except BadValue:
            raise BadSettingError(spec, text) from None

    @staticmethod
    def _with_options(settings: ChatSettings, options: MemeOptions) -> ChatSettings:
        """The chat's settings with one request's own choices. Those come from users too, so
        they are checked by the same table as the settings."""
        names = {s.name: s for s in SETTINGS}
        chosen: dict[str, Any] = {}
        for option in dataclasses.fields(options):
            value = getattr(options, option.name)
            if value is None or option.name not in names:
                continue
            try:
                chosen[option.name] = check_value(option.name, value)
            except BadValue:
                raise BadSettingError(names[option.name], str(value)) from None
        return dataclasses.replace(settings, **chosen)

    # --- steps ---

    async def _stored_template(self, slug: str) -> str | Template:
        """What a stored meme was made on: its picture, for a user's picture; else the catalog slug
        (looked up again, so a template since disabled in the chat is refused)."""
        if not is_upload_key(slug):
            return slug
        picture = self._pictures.get(slug) or await self.storage.picture_template(slug)
        if picture is None:
            raise PictureGoneError()
        return picture

    async def _resolve_template(
        self, template: str | Template | Picture | None, settings: ChatSettings
    ) -> tuple[Template, Found | None]:
        if isinstance(template, Picture):
            chosen, recognized = await asyncio.to_thread(self._picture_template, template)
            allowed = settings.allowed_templates
            if recognized and (allowed is None or chosen.slug in allowed):
                return chosen, Found("recognized")
            # Not a template, or one this chat left out: the picture as it is, with the classic layout.
            return Template.from_image_bytes(template.data, name=template.name), None
        if not isinstance(template, Template):
            return self._choose_template(template, settings), None
        if not template.is_upload:  # a catalog template still obeys the chat's allow-list
            allowed = settings.allowed_templates
            if allowed is not None and template.slug not in allowed:
                return self._choose_template(template.slug, settings), None  # refuses, worded as for a name
        return template, None

    def _pick_candidates(self, prefix: str, settings: ChatSettings) -> dict[str, Template]:
        """The templates a pick may choose for this prefix, by dataset name: allowed here, with
        a box for each of its parts. Those without caption data are chosen by their set phrase
        only (`_pick_template`), or at random when none of the others is allowed."""
        boxes = prefix.count("|") + 1
        self._check_box_count(max(self.catalog.templates, key=lambda t: len(t.boxes)), boxes)
        allowed = settings.allowed_templates
        candidates = {
            t.dataset_name: t
            for t in self.catalog.templates
            if len(t.boxes) >= boxes and (allowed is None or t.slug in allowed)
        }
        if not candidates:
            raise NoTemplatesEnabledError()
        return candidates

    async def _pick_template(self, prefix: str, candidates: dict[str, Template]) -> tuple[Template, Found]:
        """The template whose set phrase the prefix uses ("one does not simply ..."), else the
        one the model finds the prefix most likely under, drawn among the best three
        (model/requests.py's choose_template); the other two are offered as alternatives."""
        assert self.pool is not None
        phrased = self.catalog.by_phrase(prefix)
        if phrased is not None and phrased.dataset_name in candidates:
            return phrased, Found("picked")
        known = tuple(name for name, t in candidates.items() if t.has_data)
        if not known:  # only templates the model has no captions of are allowed here
            return self._rng.choice(list(candidates.values())), Found("picked")
        try:
            scores = await self.pool.score_templates(prefix[:MAX_PICK_CHARS], known)
        except (PoolBusy, PoolTimeout) as exc:
            raise BusyError(exc.user_message) from exc
        except InvalidRequest:  # nothing the model can read: any template will do
            scores = TemplateScores((), ())
        except PoolError as exc:
            raise GenerationError(exc.user_message) from exc
        if not scores.templates:
            chosen = self._rng.choice(list(candidates.values()))
            return chosen, Found("picked")
        name = choose_template(scores, self._rng)
        others = tuple(candidates[n] for n in scores.templates[:PICK_AMONG] if n != name)
        return candidates[name], Found("picked", others)

    def _picture_template(self, picture: Picture) -> tuple[Template, bool]:
        """The catalog template a picture shows (True), else the picture itself (False).
        CPU work (decoding, hashing): runs in a worker thread."""
        try:
            template = Template.from_image_bytes(picture.data, name=picture.name)
        except ImageError as exc:
            raise BadPictureError(str(exc)) from None
        if self.recognizer is not None:
            with Image.open(io.BytesIO(picture.data)) as image:  # readable: checked just above
                recognition = self.recognizer.recognize(ImageOps.exif_transpose(image).convert("RGB"))
            if recognition is not None:
                return recognition.template, True
        return template, False

    def _remember_picture(self, template: Template) -> None:
        """Keep the newest pictures in memory, so 🔁 works on them where the chat does not store
        pictures (until this process restarts or RECENT_PICTURES newer ones push them out)."""
        self._pictures[template.slug] = template
        self._pictures.move_to_end(template.slug)
        while len(self._pictures) > RECENT_PICTURES:
            self._pictures.popitem(last=False)

    def _choose_template(self, query: str | None, settings: ChatSettings) -> Template:
        allowed = settings.allowed_templates
        if query is not None:
            query = clean_text(query[: MAX_TEMPLATE_QUERY * 4])
        if query is None or not query:
            candidates = [t for t in self.catalog.templates if allowed is None or t.slug in allowed]
            if not candidates:
                raise NoTemplatesEnabledError()
            # Prefer templates the model has seen captions for: its memes there are better.
            known = [t for t in candidates if t.has_data]
            return self._rng.choice(known or candidates)
        if len(query) > MAX_TEMPLATE_QUERY:
            raise BadInputError("That's not a template name. Try /templates to see them all.")
        try:
            template = self.catalog.lookup(query.strip())
        except UnknownTemplate as exc:
            raise UnknownTemplateError(str(exc), list(exc.suggestions)) from None
        if allowed is not None and template.slug not in allowed:
            raise TemplateNotEnabledError(template)
        return template

    def _request(
        self, template: Template, plan: CaptionPlan, settings: ChatSettings, options: MemeOptions
    ) -> GenerationRequest:
        chosen = self._with_options(settings, options)
        g = self.config.generation
        return GenerationRequest(
            template=plan.model_template,
            prefix=plan.prefix,
            method=chosen.method,
            temperature=chosen.temperature,
            top_k=g.top_k,
            top_p=g.top_p,
            beam_width=chosen.beam_width,
            max_length=chosen.max_length,
            banned_words=self.filter.banned if chosen.filter_enabled else (),
            n_boxes=plan.model_boxes(len(template.boxes)),
            fill_boxes=plan.fill_boxes,
            lexicon=chosen.lexicon,
            block_repeats=g.block_repeats,
            # Greedy and beam search write one caption whatever N is: only sampling has candidates.
            best_of=chosen.best_of if chosen.method == "sample" else 1,
            rank_length_power=g.rank_length_power,
        )

    @contextmanager
    def _turn(self, ctx: ChatContext, settings: ChatSettings) -> Iterator[None]:
        """Charge one meme to the user and the chat, or raise CooldownError. The charge is
        given back when the bot, not the user, fails (busy, model error)."""
        if not ctx.rate_limited:
            yield
            return
        user_key = f"{ctx.platform}:{ctx.user_id}"
        chat_key = f"{ctx.platform}:{ctx.chat_id}"
        cooldown_key = f"{chat_key}:{ctx.user_id}"
        user_wait = max(
            self._user_limit.wait_time(user_key), self._cooldown.wait_time(cooldown_key, settings.cooldown_s)
        )
        chat_rate = settings.chat_rate_per_minute
        chat_wait = self._chat_limit.wait_time(chat_key, chat_rate)
        if user_wait > 0 or chat_wait > 0:
            raise CooldownError(max(user_wait, chat_wait), whole_chat=chat_wait > user_wait)
        self._user_limit.spend(user_key)
        self._chat_limit.spend(chat_key, chat_rate)
        self._cooldown.spend(cooldown_key)
        try:
            yield
        # Cancelled: the caller gave up before anything was served (an inline query the user's
        # next keystroke replaced): nothing to charge for.
        except (BusyError, GenerationError, NoCandidateLeft, asyncio.CancelledError):
            self._user_limit.refund(user_key)
            self._chat_limit.refund(chat_key, chat_rate)
            self._cooldown.refund(cooldown_key)
            raise

    @staticmethod
    def _check_box_count(template: Template, given: int) -> None:
        """More boxes than the template has: say how many it takes (never merge them)."""
        problem = box_count_error(template, given, "|")
        if problem:
            raise BoxCountError(template, given, problem)

    def _refuse_banned(self, text: str, what: str) -> None:
        word = self.filter.find(text)
        if word is not None:
            raise BannedWordError(what, word[0] + "*" * (len(word) - 1))

    async def _generate_clean(self, request: GenerationRequest) -> list[list[str]]:
        """Generate: the captions (box lists), best first, at least one. The decoder already
        never completes a banned word, but a banned phrase can still appear across words:
        such candidates are dropped; if none is left, sample once more, and mask what is left."""
        candidates = await self._generate(request)
        if not request.banned_words:
            return candidates
        clean = [boxes for boxes in candidates if self.filter.find(" | ".join(boxes)) is None]
        if clean:
            return clean
        logger.info("a generated caption hit the content filter; sampling again")
        candidates = await self._generate(dataclasses.replace(request, method="sample", seed=None))
        clean = [boxes for boxes in candidates if self.filter.find(" | ".join(boxes)) is None]
        if clean:
            return clean
        return [[self.filter.mask(box) for box in candidates[0]]]

    async def _generate(self, request: GenerationRequest) -> list[list[str]]:
        assert self.pool is not None
        try:
            result = await self.pool.generate(request)
        except (PoolBusy, PoolTimeout) as exc:
            raise BusyError(exc.user_message) from exc
        except InvalidRequest as exc:
            raise BadInputError(exc.user_message) from exc
        except PoolError as exc:
            raise GenerationError(exc.user_message) from exc
        if not result.captions:
            raise GenerationError("The meme machine came up empty. Please try again.")
        return [list(caption.boxes) for caption in result.captions]

    async def _finish(
        self,
        ctx: ChatContext,
        settings: ChatSettings,
        template: Template,
        boxes: list[str],
        prefix: str,
        method: str,
        params: dict[str, Any],
        model_id: str,
        uppercase: bool | None,
    ) -> MadeMeme:
        # Rendering is CPU work: off the event loop, so other chats keep being served.
        image = await asyncio.to_thread(self.renderer.render, template, boxes, uppercase=uppercase)
        if uppercase is not None:
            params = {**params, "uppercase": uppercase}
        meme_id = await self.storage.record_meme(
            NewMeme(
                platform=ctx.platform,
                chat_id=self._stored_chat(ctx),
                user_id=ctx.user_id,
                template=template,
                prefix=prefix,
                boxes=boxes,
                method=method,
                params=params,
                model_id=model_id,
                keep_picture=settings.keep_pictures,
                scope_id=self._stored_scope(ctx),
                author_name=self._author_name(ctx),
            )
        )
        if template.is_upload:
            self._remember_picture(template)
        return MadeMeme(
            id=meme_id, template=template, boxes=boxes, image=image, score=Score(0, 0), prefix=prefix
        )
