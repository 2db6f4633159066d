"""The template catalog: which meme templates exist, where their text goes, and name lookup.

The catalog is one TOML file (`data/templates.toml`) of `[[template]]` tables, each with nested
`[[template.box]]` tables. Loading validates everything a renderer or a chat command will rely
on, so a mistake in the file fails at start-up with the template named, not mid-conversation.

Lookup turns what a user typed ("Change my mind", "chnage my mind", "drak") into a template:
exact names and aliases first, then a fuzzy match only when it is clearly the best one.
Template names are user input and never reach the file system: `image_path` only uses the
catalog's own `image` field, which loading checks is a bare file name.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import ImageColor
from rapidfuzz import fuzz
from rapidfuzz.distance import OSA

from common.template import IMAGE_FILE_RE, Box, CatalogImage, Template, phrase_words

ALIGNMENTS = ("left", "center", "right")

# A fuzzy match is taken only when it scores this well (0-100) and beats the best other
# template by the margin: "cat" fits three templates equally, so it names none of them.
FUZZY_ACCEPT = 80.0
FUZZY_MARGIN = 8.0
ALIAS_WEIGHT = 0.9
# `named`: a whole name typed with a slip (one edit in five letters, two in ten).
TYPO_ACCEPT = 80.0
# Words people start captions with: as the first word of `/meme ...` they begin the caption, even
# where they are also a word of some template's name ("me" in Look At Me, "this" in This Is Fine).
CAPTION_WORDS = frozenset(
    """a about after all also always am an and any are as at be because been before being but by can
    cant could did didnt do does doesnt dont down every for from get gets getting go goes going gonna got
    had has have having he her here hey him his how i if im in is isnt it its ive just know let lets like
    look me mom more most my never new no not now of off oh ok okay on once one only or our out over
    first world little every great thing things being other another last best finally
    people please really right said say says see she should so some someone still such tell than that
    thats the their them then there these they thing this those time to today too try trying up us very
    wait want wants was we well were what whats when where which while who why will with without wont
    would yes yet you your youre""".split()
)
# Search results below this score are noise rather than typos.
SEARCH_CUTOFF = 70.0
# Ranking above any fuzzy score (0-100): exact names, then word-prefix matches on names, then aliases.
EXACT_SCORE = 103.0
PREFIX_SCORE_NAME = 102.0
PREFIX_SCORE_ALIAS = 101.0
# Lookup takes a word prefix as meaning the word only from this many letters ("drak" is
# Drake, "gru" is not Grumpy Cat); search, which shows a list, takes any prefix.
MIN_LOOKUP_PREFIX = 4
# Longer input is not a template name; cutting it keeps fuzzy matching cheap.
MAX_QUERY_CHARS = 100

_SLUG_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_DATASET_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_APOSTROPHES = str.maketrans("", "", "'’‘`´")
_WORD_RE = re.compile(r"[^\W_]+")


class CatalogError(ValueError):
    """The catalog file is missing or wrong; the message names the template and the field."""


class UnknownTemplate(LookupError):
    """No template matches what the user typed; carries the closest ones to offer instead."""

    def __init__(self, query: str, suggestions: Sequence[Template]) -> None:
        self.query = query
        self.suggestions = list(suggestions)
        super().__init__(self._message())

    def _message(self) -> str:
        shown = " ".join(self.query.split())
        if len(shown) > 40:
            shown = shown[:39] + "…"
        names = ", ".join(t.slug for t in self.suggestions)
        start = f'No template "{shown}".' if shown else "No template name given."
        if not names:
            return start
        return f"{start} Did you mean: {names}?" if shown else f"{start} Try: {names}."


def normalize_name(text: str) -> str:
    """The form names are compared in: case, spaces, hyphens, underscores and apostrophes don't count.

    "Y'all Got Any More Of That", "yall-got-any-more-of-that" and "YALL_GOT any more of that"
    all become "yall got any more of that".
    """
    text = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    return " ".join(_WORD_RE.findall(text))


def _words_match(query_words: Sequence[str], key_words: Sequence[str], min_prefix: int) -> bool:
    """Whether each query word starts a key word, in order: "yelling cat" in "woman yelling at cat".

    A query word shorter than `min_prefix` must be a whole key word; 0 allows no prefixes.
    """
    i = 0
    for q in query_words:
        while i < len(key_words) and not (
            key_words[i] == q or (0 < min_prefix <= len(q) and key_words[i].startswith(q))
        ):
            i += 1
        if i == len(key_words):
            return False
        i += 1
    return True


@dataclass(frozen=True)
class _Key:
    text: str  # normalised
    words: tuple[str, ...]
    index: int  # the template's position in the catalog
    is_alias: bool


class Catalog:
    """All templates, in catalog order (most popular first), with lookup and search."""

    def __init__(self, templates: Iterable[Template]) -> None:
        self.templates: tuple[Template, ...] = tuple(templates)
        self._by_slug: dict[str, Template] = {}
        self._exact: dict[str, int] = {}
        self._keys: list[_Key] = []
        for index, template in enumerate(self.templates):
            if template.slug in self._by_slug:
                raise CatalogError(f"template {template.slug}: the slug is used twice")
            self._by_slug[template.slug] = template
            primary = {normalize_name(n) for n in (template.slug, template.name, template.dataset_name)}
            aliases = {normalize_name(a) for a in template.aliases} - primary
            for text, is_alias in [(t, False) for t in sorted(primary)] + [
                (t, True) for t in sorted(aliases)
            ]:
                if not text:
                    raise CatalogError(f"template {template.slug}: a name or alias has no letters or digits")
                other = self._exact.get(text)
                if other is not None:
                    raise CatalogError(
                        f"template {template.slug}: {text!r} already names template "
                        f"{self.templates[other].slug}; lookups would be ambiguous"
                    )
                self._exact[text] = index
                self._keys.append(_Key(text, tuple(text.split()), index, is_alias))
        self._vocabulary = sorted({w for k in self._keys for w in k.words})
        # Names typed without spaces; a form two templates share is left out, not guessed.
        compact: dict[str, set[int]] = {}
        for key in self._keys:
            compact.setdefault(key.text.replace(" ", ""), set()).add(key.index)
        self._compact = {text: owners.pop() for text, owners in compact.items() if len(owners) == 1}

    def get(self, slug: str) -> Template:
        """The template with exactly this slug; KeyError if there is none."""
        try:
            return self._by_slug[slug]
        except KeyError:
            raise KeyError(f"no template with slug {slug!r}") from None

    def lookup(self, query: str) -> Template:
        """The template a user means; raises UnknownTemplate (with suggestions) when unsure.

        Tried in order: an exact slug, name, dataset name or alias (ignoring case and
        separators); words that pick out one template's name, then one template's aliases
        ("drak", "pikachu", "yelling cat"); a fuzzy match that is both close and clearly
        better than any other template ("chnage my mind").
        """
        q = normalize_name(query[:MAX_QUERY_CHARS])
        if q in self._exact:
            return self.templates[self._exact[q]]
        if q.replace(" ", "") in self._compact:  # typed without spaces: "changemymind"
            return self.templates[self._compact[q.replace(" ", "")]]
        if q:
            words = q.split()
            # Whole words before prefixes, names before aliases: "sign" is a word of Change My
            # Mind's alias "steven crowders sign", not the start of Trump Bill *Sign*ing.
            for min_prefix, aliases in (
                (0, False),
                (0, True),
                (MIN_LOOKUP_PREFIX, False),
                (MIN_LOOKUP_PREFIX, True),
            ):
                hits = {
                    k.index
                    for k in self._keys
                    if k.is_alias == aliases and _words_match(words, k.words, min_prefix)
                }
                if len(hits) == 1:
                    return self.templates[hits.pop()]
                if hits:
                    break  # several templates share these words: only a clear fuzzy winner decides
            ranked = self._fuzzy_scores(q) + [(0.0, -1)]  # a floor, so there is always a runner-up
            (best_score, best), (runner_up, _) = ranked[0], ranked[1]
            if best_score >= FUZZY_ACCEPT and best_score - runner_up >= FUZZY_MARGIN:
                return self.templates[best]
        raise UnknownTemplate(query, self.suggestions(query))

    def named(self, word: str) -> Template | None:
        """The template `word` names on its own, as the first word of `/meme WORD rest` would:
        a whole slug, name, dataset name or alias ("drake", "change-my-mind"), or a close typo of
        one ("chnage-my-mind", "doeg"); else None. Unlike `lookup`, one word of a longer name is
        not enough: in "/meme when the tests pass", "when" is the caption's first word."""
        q = normalize_name(word[:MAX_QUERY_CHARS])
        if not q:
            return None
        if q in self._exact:
            return self.templates[self._exact[q]]
        if q.replace(" ", "") in self._compact:
            return self.templates[self._compact[q.replace(" ", "")]]
        words = q.split()
        if len(words) == 1 and len(q) >= MIN_LOOKUP_PREFIX and q not in CAPTION_WORDS:
            # A distinctive word of one template's name, or its start: "drake", "spongebob",
            # "drak". Short name words ("man", "dog", "guy") and words captions start with
            # ("when", "first") begin a caption instead; aliases count only whole (above).
            hits = {
                k.index
                for k in self._keys
                if not k.is_alias and any(len(w) >= 5 and w.startswith(q) for w in k.words)
            }
            if len(hits) == 1:
                return self.templates[hits.pop()]
            if hits:
                return None  # a word of several templates' names names none of them
        compact = q.replace(" ", "")
        best: dict[int, float] = {}
        for key in self._keys:
            score = 100.0 * OSA.normalized_similarity(compact, key.text.replace(" ", ""))
            best[key.index] = max(best.get(key.index, 0.0), score)
        ranked = sorted(((s, i) for i, s in best.items()), key=lambda item: (-item[0], item[1])) + [(0.0, -1)]
        (score, index), (runner_up, _) = ranked[0], ranked[1]
        if score >= TYPO_ACCEPT and score - runner_up >= FUZZY_MARGIN:
            return self.templates[index]
        return None

    def by_phrase(self, text: str) -> Template | None:
        """The template whose set phrase `text` uses: it starts with one of the template's
        `openings` ("one does not simply walk into mordor") or ends with its `closing` ("i like
        communism but that's none of my business"), compared word by word across box breaks; else
        None. Only templates without caption data have set phrases, and the model cannot pick
        those by likelihood (it never saw their captions), so the phrase is what names them."""
        said = phrase_words(text)
        if not said:
            return None
        for template in self.templates:
            for opening in template.openings:
                words = phrase_words(opening)
                if words and said[: len(words)] == words:
                    return template
            words = phrase_words(template.closing)
            if words and said[-len(words) :] == words:
                return template
        return None

    def search(self, query: str = "", limit: int = 25) -> list[Template]:
        """Templates matching a partial or misspelt query, best first; "" lists them in catalog order.

        This powers `/templates <query>` and Discord autocomplete (which shows at most 25).
        """
        limit = max(0, limit)
        q = normalize_name(query[:MAX_QUERY_CHARS])
        if not q:
            return list(self.templates[:limit])
        ranked = [(score, i) for score, i in self._ranked(q) if score >= SEARCH_CUTOFF]
        return [self.templates[i] for _, i in ranked[:limit]]

    def suggestions(self, query: str, n: int = 3) -> list[Template]:
        """The n templates closest to the query, however far: what to offer after a miss."""
        n = max(0, n)
        q = normalize_name(query[:MAX_QUERY_CHARS])
        if not q:
            return list(self.templates[:n])
        return [self.templates[i] for _, i in self._ranked(q)[:n]]

    def image_path(self, template: Template, images_dir: Path) -> Path:
        """Where a catalog template's blank image is: always inside images_dir."""
        if not isinstance(template.image, CatalogImage):
            raise ValueError(f"template {template.slug}: not a catalog image")
        return images_dir / template.image.file

    def _fuzzy_scores(self, q: str) -> list[tuple[float, int]]:
        """Best fuzzy score per template, best first (ties in catalog order).

        A key scores the better of two measures: the whole query against the whole key with
        words sorted (good at reordered names), and word by word, each query word against its
        closest key word by edit distance counting a swap of two letters as one edit (good at
        a typo in a short word: "drke", "chnage"). Partial-string measures are left out on
        purpose: they make "gru" a confident match for "grumpy cat". Aliases count for a
        little less: they come from the dataset and are noisier than names.
        """
        query_words = q.split()
        closeness = [
            {w: 100.0 * OSA.normalized_similarity(qw, w) for w in self._vocabulary} for qw in query_words
        ]
        best: dict[int, float] = {}
        for key in self._keys:
            per_word = sum(max(c[w] for w in key.words) for c in closeness) / len(closeness)
            score = max(fuzz.token_sort_ratio(q, key.text), per_word) * (
                ALIAS_WEIGHT if key.is_alias else 1.0
            )
            if score > best.get(key.index, -1.0):
                best[key.index] = score
        return sorted(((s, i) for i, s in best.items()), key=lambda item: (-item[0], item[1]))

    def _ranked(self, q: str) -> list[tuple[float, int]]:
        """Every template scored against the query: exact > word prefix > fuzzy."""
        words = q.split()
        scores = {i: s for s, i in self._fuzzy_scores(q)}
        for key in self._keys:
            if key.text == q:
                bonus = EXACT_SCORE
            elif _words_match(words, key.words, min_prefix=1):
                bonus = PREFIX_SCORE_ALIAS if key.is_alias else PREFIX_SCORE_NAME
            else:
                continue
            scores[key.index] = max(scores[key.index], bonus)
        return sorted(((s, i) for i, s in scores.items()), key=lambda item: (-item[0], item[1]))


# --- loading -------------------------------------------------------------------------------

_TEMPLATE_FIELDS = {
    "slug": str,
    "name": str,
    "imgflip_id": int,
    "dataset_name": str,
    "image": str,
    "width": int,
    "height": int,
    "aliases": list,
    "has_data": bool,
    "box": list,
}
# Optional, for a template without caption data: how the model captions it (Template.caption_plan).
_TEMPLATE_OPTIONAL = {"caption_like": str, "caption_boxes": list, "openings": list, "closing": str}
_BOX_FIELDS = {
    "x": float,
    "y": float,
    "w": float,
    "h": float,
    "align": str,
    "color": str,
    "outline": str,
    "angle": float,
    "uppercase": bool,
}
_BOX_REQUIRED = ("x", "y", "w", "h")
_TYPE_WORDS = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    list: "a list",
}


def _check_type(value: Any, expected: type, where: str) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and expected is not bool:
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise CatalogError(f"{where}: expected {_TYPE_WORDS[expected]}, got {value!r}")
    return value


def _check_colour(value: str, where: str, allow_none: bool) -> str:
    if allow_none and value == "":
        return value
    try:
        ImageColor.getrgb(value)
    except ValueError:
        hint = ' (or "" for none)' if allow_none else ""
        raise CatalogError(
            f'{where}: {value!r} is not a colour; use e.g. "#000000" or "white"{hint}'
        ) from None
    return value


def _parse_box(raw: Any, where: str) -> Box:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a [[template.box]] table")
    unknown = sorted(set(raw) - set(_BOX_FIELDS))
    if unknown:
        raise CatalogError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(_BOX_FIELDS)})")
    missing = [f for f in _BOX_REQUIRED if f not in raw]
    if missing:
        raise CatalogError(f"{where}: missing {', '.join(missing)}")
    values = {key: _check_type(value, _BOX_FIELDS[key], f"{where}: {key}") for key, value in raw.items()}
    box = Box(**values)
    for name in ("x", "y"):
        if not 0.0 <= getattr(box, name) <= 1.0:
            raise CatalogError(f"{where}: {name} = {getattr(box, name)} must be a fraction between 0 and 1")
    for name in ("w", "h"):
        if not 0.0 < getattr(box, name) <= 1.0:
            raise CatalogError(
                f"{where}: {name} = {getattr(box, name)} must be a fraction above 0, at most 1"
            )
    # A little slack for rounding in hand-written fractions.
    if box.x + box.w > 1.0 + 1e-6:
        raise CatalogError(f"{where}: x + w = {box.x + box.w:.3f} reaches past the right edge (at most 1)")
    if box.y + box.h > 1.0 + 1e-6:
        raise CatalogError(f"{where}: y + h = {box.y + box.h:.3f} reaches past the bottom edge (at most 1)")
    if box.align not in ALIGNMENTS:
        raise CatalogError(f"{where}: align = {box.align!r} must be one of {', '.join(ALIGNMENTS)}")
    if not -180.0 <= box.angle <= 180.0:
        raise CatalogError(f"{where}: angle = {box.angle} must be between -180 and 180 degrees")
    _check_colour(box.color, f"{where}: color", allow_none=False)
    _check_colour(box.outline, f"{where}: outline", allow_none=True)
    return box


def _parse_template(raw: Any, position: int) -> Template:
    if not isinstance(raw, dict):
        raise CatalogError(f"template #{position}: expected a [[template]] table")
    label = raw.get("slug") if isinstance(raw.get("slug"), str) else f"#{position}"
    where = f"template {label}"
    known = {**_TEMPLATE_FIELDS, **_TEMPLATE_OPTIONAL}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise CatalogError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(known)})")
    missing = [f for f in _TEMPLATE_FIELDS if f not in raw]
    if missing:
        raise CatalogError(f"{where}: missing {', '.join(missing)}")
    values = {key: _check_type(value, known[key], f"{where}: {key}") for key, value in raw.items()}

    if not _SLUG_RE.fullmatch(values["slug"]):
        raise CatalogError(f"{where}: slug must be lower-case words joined by hyphens, like change-my-mind")
    if not values["name"].strip():
        raise CatalogError(f"{where}: name is empty")
    if not _DATASET_NAME_RE.fullmatch(values["dataset_name"]):
        raise CatalogError(
            f"{where}: dataset_name {values['dataset_name']!r} must be a file stem like Change-My-Mind"
        )
    if not IMAGE_FILE_RE.fullmatch(values["image"]):
        raise CatalogError(
            f"{where}: image {values['image']!r} must be a bare .jpg/.png file name, no folders"
        )
    for key in ("imgflip_id", "width", "height"):
        if values[key] <= 0:
            raise CatalogError(f"{where}: {key} must be positive, got {values[key]}")
    aliases = values["aliases"]
    for alias in aliases:
        if not isinstance(alias, str) or not alias.strip():
            raise CatalogError(f"{where}: aliases must be non-empty strings, got {alias!r}")
    raw_boxes = values["box"]
    if not raw_boxes:
        raise CatalogError(f"{where}: needs at least one [[template.box]]")
    boxes = tuple(_parse_box(b, f"{where}: box {n}") for n, b in enumerate(raw_boxes, start=1))
    like, order, openings, closing = _parse_captioning(values, len(boxes), where)
    return Template(
        slug=values["slug"],
        name=values["name"],
        imgflip_id=values["imgflip_id"],
        dataset_name=values["dataset_name"],
        image=CatalogImage(values["image"]),
        width=values["width"],
        height=values["height"],
        aliases=tuple(aliases),
        has_data=values["has_data"],
        boxes=boxes,
        caption_like=like,
        caption_boxes=order,
        openings=openings,
        closing=closing,
    )


def _parse_captioning(
    values: dict[str, Any], n_boxes: int, where: str
) -> tuple[str, tuple[int, ...], tuple[str, ...], str]:
    """caption_like, caption_boxes, openings and closing, checked on their own (caption_like's template
    is checked once the whole catalog is read)."""
    like = values.get("caption_like", "")
    order = values.get("caption_boxes", [])
    openings = values.get("openings", [])
    closing = values.get("closing", "")
    if (like or order or openings or closing) and values["has_data"]:
        raise CatalogError(
            f"{where}: caption_like, caption_boxes, openings and closing are for a template without data"
        )
    if closing and (n_boxes < 2 or order or not closing.strip() or "|" in closing):
        raise CatalogError(
            f"{where}: closing is the text of the last of two or more boxes (no |), not with caption_boxes"
        )
    if like and not _DATASET_NAME_RE.fullmatch(like):
        raise CatalogError(f"{where}: caption_like {like!r} must be another template's dataset_name")
    if order:
        if not like:
            raise CatalogError(f"{where}: caption_boxes reorders caption_like's boxes: set caption_like too")
        if openings:
            raise CatalogError(
                f"{where}: openings are written in the template's own box order: not with caption_boxes"
            )
        if len(order) != n_boxes or any(
            isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in order
        ):
            raise CatalogError(
                f"{where}: caption_boxes needs one box number (from 1) for each of its {n_boxes} boxes"
            )
        if len(set(order)) != len(order):
            raise CatalogError(f"{where}: caption_boxes names a box twice: {order}")
    for opening in openings:
        if not isinstance(opening, str) or not opening.strip():
            raise CatalogError(f"{where}: openings must be non-empty strings, got {opening!r}")
        if opening.count("|") >= n_boxes:
            raise CatalogError(f"{where}: the opening {opening!r} fills more than its {n_boxes} boxes")
    return like, tuple(order), tuple(openings), closing


def parse_catalog(data: dict[str, Any]) -> Catalog:
    """A catalog from already-parsed TOML data; raises CatalogError naming the bad template."""
    unknown = sorted(set(data) - {"template"})
    if unknown:
        raise CatalogError(f"unknown top-level key {unknown[0]!r}: the file holds only [[template]] tables")
    raw_templates = data.get("template")
    if not isinstance(raw_templates, list) or not raw_templates:
        raise CatalogError("no [[template]] tables")
    templates = [_parse_template(raw, n) for n, raw in enumerate(raw_templates, start=1)]
    for field in ("dataset_name", "imgflip_id"):
        seen: dict[Any, str] = {}
        for t in templates:
            value = getattr(t, field)
            if value in seen:
                raise CatalogError(
                    f"template {t.slug}: {field} {value!r} is already used by template {seen[value]}"
                )
            seen[value] = t.slug
    with_data = {t.dataset_name: t for t in templates if t.has_data}
    for t in templates:
        if not t.caption_like:
            continue
        like = with_data.get(t.caption_like)
        if like is None:
            raise CatalogError(
                f"template {t.slug}: caption_like {t.caption_like!r} is no template with caption data"
            )
        if t.caption_boxes and max(t.caption_boxes) > len(like.boxes):
            raise CatalogError(
                f"template {t.slug}: caption_boxes {list(t.caption_boxes)}: {like.slug} has {len(like.boxes)} boxes"
            )
    return Catalog(templates)


def load_catalog(path: Path) -> Catalog:
    """Read and validate the catalog file; CatalogError says what to fix and where."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(
            f"catalog file {path} does not exist (set [paths] catalog in the config)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"catalog file {path} cannot be read: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"catalog file {path} is not valid TOML: {exc}") from exc
    try:
        return parse_catalog(data)
    except CatalogError as exc:
        raise CatalogError(f"{path}: {exc}") from None
