"""The word lexicon and the word rules that decoding obeys: no non-words, no loops.

A caption is written one character at a time, so nothing stops a network from spelling
"friendshirt" or from going round "start to start to start". The generator (model/decoding.py)
therefore masks, at every step and for every method, the characters that would break one of
these rules, the same way it keeps a banned word from being completed:

- **Lexicon.** A word can only be spelled along a character trie of the words seen at least
  `min_count` times in the training captions (plus, per request, the words of the user's prefix
  and of the template's name), and can only end where one of them ends. Numbers (digit runs)
  are always allowed.
- **No repeated word 3-gram** anywhere in the caption (across boxes, the prefix's words
  included): a word that would complete a 3-gram already written cannot end there.
- **No box twice:** a box whose text equals an earlier box cannot be closed (<sep>, <end>).

What a word is, here and in `memebot quality`: a maximal run of letters and digits with single
apostrophes inside (`WORD`): "don't", "9000", "3am", "rock'n'roll"; "'quoted'" is the word
"quoted" between two quote marks, and "lol!!" is "lol" and punctuation.

This module is plain Python plus torch and knows nothing of training: `build_lexicon` takes
caption texts, `memebot lexicon` (model/lexicon_cli.py) builds the shipped file from the
training split.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from model.vocab import END, SEP, normalize_user_text

WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
MIN_COUNT = 3  # a word is a word once training captions used it this often
FORMAT = "memebot-lexicon 1"  # first line of the file
SEEN_MARK = "#seen"  # the line after the words, before the caption fingerprints (no word has a #)


class LexiconError(ValueError):
    """A lexicon file that cannot be read."""


def words(text: str) -> list[str]:
    """The words of `text` (lower-cased), in order: see the module docstring."""
    return WORD.findall(text.lower())


def is_number(word: str) -> bool:
    return word.isdigit()


def template_words(name: str) -> list[str]:
    """The words of a template's name ("Y-U-No", "Change-My-Mind", "Mocking Spongebob")."""
    return words(re.sub(r"[-_]", " ", name))


def caption_hash(boxes: Sequence[str]) -> int:
    """A 64-bit fingerprint of a caption (its boxes in order, empty boxes at the end left out):
    how the lexicon remembers the training captions without storing their text."""
    boxes = list(boxes)
    while boxes and not boxes[-1]:
        boxes.pop()
    return int.from_bytes(hashlib.blake2b("\n".join(boxes).encode(), digest_size=8).digest(), "big")


@dataclass
class Lexicon:
    """Word -> how often the training captions used it, for the words used at least
    `min_count` times (numbers left out: they are always allowed); and the fingerprints of
    the training captions themselves, so that best-of-N can rank a verbatim copy of someone's
    meme below a caption of its own."""

    counts: dict[str, int]
    min_count: int = MIN_COUNT
    captions: int = 0  # how many captions it was counted from (for the record)
    seen: frozenset[int] = frozenset()  # caption_hash of every training caption

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and (is_number(word) or word in self.counts)

    def is_copy(self, boxes: Sequence[str]) -> bool:
        return caption_hash(boxes) in self.seen

    def __len__(self) -> int:
        return len(self.counts)

    def save(self, path: Path) -> None:
        """A gzipped text file: a header line, then `word<TAB>count` per line, sorted (a few
        hundred KB for the 27k words of ImgFlip575K), then a `#seen` line and the training
        captions' fingerprints in hex, sorted (about 3 MB more). Reproducible: no time stamp."""
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{FORMAT}\tmin_count={self.min_count}\tcaptions={self.captions}"]
        lines += [f"{w}\t{c}" for w, c in sorted(self.counts.items())]
        if self.seen:
            lines += [SEEN_MARK, *(f"{h:016x}" for h in sorted(self.seen))]
        raw = io.BytesIO()
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
            f.write(("\n".join(lines) + "\n").encode("ascii"))
        path.write_bytes(raw.getvalue())


def count_words(texts: Iterable[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(words(text))
    return counts


def build_lexicon(texts: Iterable[str], min_count: int = MIN_COUNT) -> Lexicon:
    """The lexicon of caption texts (boxes joined by anything that is not a word character,
    e.g. " | " or a newline): the words they use at least `min_count` times."""
    if min_count < 1:
        raise ValueError(f"min_count must be at least 1, got {min_count}")
    n = 0

    def counted() -> Iterable[str]:
        nonlocal n
        for text in texts:
            n += 1
            yield text

    counts = count_words(counted())
    kept = {w: c for w, c in counts.items() if c >= min_count and not is_number(w)}
    return Lexicon(kept, min_count, n)


def load_lexicon(path: Path, min_count: int | None = None) -> Lexicon:
    """Read a file `Lexicon.save` wrote; `min_count` may raise (not lower) the file's own."""
    try:
        with gzip.open(path, "rt", encoding="ascii") as f:
            header = f.readline().rstrip("\n").split("\t")
            if not header or header[0] != FORMAT:
                raise LexiconError(f"{path}: not a memebot lexicon (first line {header[0][:40]!r})")
            meta = dict(part.split("=", 1) for part in header[1:] if "=" in part)
            counts = {}
            for line in f:
                if line.startswith(SEEN_MARK):
                    break
                word, _, count = line.rstrip("\n").partition("\t")
                if word:
                    counts[word] = int(count)
            seen = frozenset(int(line, 16) for line in f if line.strip())
        file_min = int(meta.get("min_count", 1))
        captions = int(meta.get("captions", 0))
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, LexiconError):
            raise
        raise LexiconError(f"{path}: not a readable lexicon ({exc})") from exc
    wanted = max(file_min, min_count or file_min)
    if wanted > file_min:
        counts = {w: c for w, c in counts.items() if c >= wanted}
    return Lexicon(counts, wanted, captions, seen)


# ---- the trie ---------------------------------------------------------------------------


@dataclass
class Trie:
    """A character trie over vocabulary ids. Node 0 is the root; node `dead` (the last one)
    has no children and is where a spelling that left the trie stays. `forbid[node]` is the
    bool row of the ids that do not continue the node's spelling (for the mask in decoding)."""

    children: list[dict[int, int]]
    terminal: list[bool]
    forbid: np.ndarray  # [nodes, V] bool
    below: list[int]  # how many words end at the node or under it
    # forbid[node] less what each of the four lexicon flag rows allows (Rules.lexicon_flags):
    # row 4 * node + flags, so that decoding takes a row's whole mask in one lookup.
    forbid4: np.ndarray | None = None

    @property
    def dead(self) -> int:
        return len(self.children) - 1

    @classmethod
    def build(cls, vocabulary: Iterable[str], index: Mapping[str, int], size: int) -> Trie:
        children: list[dict[int, int]] = [{}]
        terminal = [False]
        for word in vocabulary:
            _insert(children, terminal, 0, word, index)
        children.append({})  # dead
        terminal.append(False)
        return cls(children, terminal, _forbid_table(children, size), _words_below(children, terminal))


def _insert(
    children: list[dict[int, int]], terminal: list[bool], root: int, word: str, index: Mapping[str, int]
) -> None:
    """Add `word` below node `root` (nodes appended as needed); a word with a character the
    model cannot write is left out."""
    if any(c not in index for c in word):
        return
    node = root
    for c in word:
        nxt = children[node].get(index[c])
        if nxt is None:
            nxt = len(children)
            children[node][index[c]] = nxt
            children.append({})
            terminal.append(False)
        node = nxt
    terminal[node] = True


def _words_below(children: Sequence[Mapping[int, int]], terminal: Sequence[bool]) -> list[int]:
    below = [int(t) for t in terminal]
    for node in range(len(children) - 1, -1, -1):  # a child always has a larger id than its parent
        for child in children[node].values():
            below[node] += below[child]
    return below


def _walk(children: Sequence[Mapping[int, int]], node: int, ids: Iterable[int], dead: int) -> int:
    for i in ids:
        node = children[node].get(i, dead)
    return node


def _forbid_table(children: Sequence[Mapping[int, int]], size: int) -> np.ndarray:
    forbid = np.ones((len(children), size), dtype=bool)
    rows = [n for n, ch in enumerate(children) for _ in ch]
    cols = [i for ch in children for i in ch]
    forbid[rows, cols] = False
    return forbid


# ---- word rules inside decoding ----------------------------------------------------------

ALNUM, APOS, OTHER = 0, 1, 2  # what a vocabulary symbol is to the word rules
# Added to the logit of a symbol a rule forbids. Not -inf: exp() of it is exactly 0 next to any
# allowed symbol, so such a symbol is never chosen, yet a row whose rules leave it nothing at
# all (a dead end no look-ahead saw) still has a distribution, the model's own over what the
# rules forbid, instead of none. Beam search drops candidates scored below SOFT_DEAD.
PENALTY = -1.0e5
SOFT_DEAD = PENALTY / 2
ROWS_KEPT = 50_000  # penalty rows a generator keeps (about 20 MB at most)


class WordState(NamedTuple):
    """Where a caption being decoded stands with respect to the word rules. Immutable, so
    beams and speculative guesses share it until they change it."""

    node: int  # lexicon trie node of `stem` (the trie's dead node once it left the trie)
    xnode: int  # the same in the trie of the request's own words (prefix, template name); 0: none
    stem: str  # the word being written: letters/digits with single ' inside; may end in one '
    numeric: bool  # stem is all digits (a number: may always go on or end)
    can_end: bool  # stem, without a last ', is a number, a lexicon word or one of the request's
    prev: tuple[str, str]  # the last two finished words ("" before there are two)
    grams: frozenset[tuple[str, str, str]]  # every word 3-gram so far
    pairs: frozenset[tuple[str, str]]  # the first two words of each of them
    box: str  # the text of the box being written
    boxes: frozenset[str]  # earlier boxes' stripped, non-empty texts

    def blocked(self) -> bool:
        """Would ending the stem here write a 3-gram already written?"""
        if self.prev not in self.pairs:
            return False
        return (*self.prev, self.stem.rstrip("'")) in self.grams


@dataclass
class Rules:
    """The word rules of one generator: its vocabulary and, if it has one, its lexicon. Tries
    without a request's banned words are built once per distinct banned list and kept."""

    symbols: Sequence[str]
    lexicon: Lexicon | None
    _variants: dict[tuple[type, tuple[str, ...]], Trie] = field(default_factory=dict)
    _by_id: dict[int, tuple[object, Trie]] = field(default_factory=dict)
    # (id of a table, its row, 0) -> that row as a penalty tensor (BatchRules.mask)
    rows: dict[tuple[int, int, int], torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        V = len(self.symbols)
        self.size = V
        self.index = {s: i for i, s in enumerate(self.symbols) if len(s) == 1}
        self.kind = [
            ALNUM if len(s) == 1 and s.isalnum() else APOS if s == "'" else OTHER for s in self.symbols
        ]
        self.char = [s if len(s) == 1 else "" for s in self.symbols]
        self.apos = self.index.get("'", -1)
        digits = np.array([len(s) == 1 and s.isdigit() for s in self.symbols])
        enders = np.array([k != ALNUM for k in self.kind])  # ' included: after a finished word it ends it
        # Row 2 * digits_ok + end_ok: what a lexicon state allows beyond its trie children.
        self.lexicon_flags = ~np.stack([np.zeros(V, dtype=bool), enders, digits, enders | digits])
        # Rows without the lexicon: 0 anything; 1 the word may not end but may take a ' (it may
        # become "don't"); 2 the word may not end and ' would end it.
        no_end = enders.copy()
        if self.apos >= 0:
            no_end[self.apos] = False
        self.plain_flags = np.stack([np.zeros(V, dtype=bool), no_end, enders])

    def trie(self, banned: tuple[str, ...]) -> Trie | None:
        """The lexicon's trie without the words `banned` holds (about 0.2 s to build, once)."""
        if self.lexicon is None:
            return None
        # Callers pass the same banned list object request after request: found by identity
        # first, without hashing its hundreds of words.
        seen = self._by_id.get(id(banned))
        if seen is not None and seen[0] is banned:
            return seen[1]
        key = (type(banned), tuple(banned))
        trie = self._variants.get(key)
        if trie is None:
            kept = (w for w in self.lexicon.counts if not (banned and w in banned))
            trie = Trie.build(kept, self.index, self.size)
            trie.forbid4 = (trie.forbid[:, None, :] & self.lexicon_flags[None, :, :]).reshape(-1, self.size)
            if len(self._variants) >= 8:
                self._variants.pop(next(iter(self._variants)))
                self._by_id.clear()
                self.rows.clear()  # keyed by the ids of tables that may be gone
            self._variants[key] = trie
        if len(self._by_id) >= 8:
            self._by_id.clear()
        self._by_id[id(banned)] = (banned, trie)
        return trie


class BatchRules:
    """The word rules for one batch of requests (each with its own words and banned list).
    Requests are numbered as in the batch; `state(q, prompt)` starts a row, `advance` moves it
    on by one symbol, `mask` applies the rules to a step's logits, `trim` fixes a caption that
    the length cap cut at a place where it could not have ended."""

    def __init__(self, rules: Rules, requests: Sequence[object]) -> None:
        self.rules = rules
        # Per request: is any rule on, the lexicon trie (None: lexicon off), the root of its own words.
        self.on: list[bool] = []
        self.tries: list[Trie | None] = []
        self.xroot: list[int] = []
        # The requests' own words, all in one trie-like table; node 0 is dead.
        xchildren: list[dict[int, int]] = [{}]
        xterminal = [False]
        for req in requests:
            lexicon_on = bool(getattr(req, "lexicon", False)) and rules.lexicon is not None
            self.on.append(lexicon_on or bool(getattr(req, "block_repeats", False)))
            banned: tuple[str, ...] = getattr(req, "banned_words", ())
            self.tries.append(rules.trie(banned) if lexicon_on else None)
            if not lexicon_on:
                self.xroot.append(0)
                continue
            # The prefix as decoding sees it (typographic quotes folded, boxes split off).
            own = words(" ".join(normalize_user_text(getattr(req, "prefix", ""))))
            own += template_words(getattr(req, "template", ""))
            root = len(xchildren)
            xchildren.append({})
            xterminal.append(False)
            self.xroot.append(root)
            for w in own:
                if banned and w in banned:
                    continue
                _insert(xchildren, xterminal, root, w, rules.index)
        self.xchildren, self.xterminal = xchildren, xterminal
        self.xforbid = _forbid_table(xchildren, rules.size)
        self.xbelow = _words_below(xchildren, xterminal)
        self._rows: dict[tuple[int, int, int], torch.Tensor] = {}  # penalty rows with own words

    # ---- states ---------------------------------------------------------------------------

    def state(self, q: int, prompt: Sequence[int]) -> WordState | None:
        """The state after request q's prompt (None when no rule is on for it)."""
        if not self.on[q]:
            return None
        empty: frozenset = frozenset()
        s = WordState(0, self.xroot[q], "", False, True, ("", ""), empty, empty, "", empty)
        for tok in prompt:
            s = self.advance(q, s, tok)
        return s

    def advance(self, q: int, s: WordState, tok: int) -> WordState:
        rules = self.rules
        kind = rules.kind[tok]
        if kind == ALNUM:
            trie = self.tries[q]
            ch = rules.char[tok]
            stem = s.stem
            if not stem:
                node = trie.children[0].get(tok, trie.dead) if trie else 0
                xnode = self.xchildren[self.xroot[q]].get(tok, 0)
                numeric = ch.isdigit()
            else:
                node = trie.children[s.node].get(tok, trie.dead) if trie else 0
                xnode = self.xchildren[s.xnode].get(tok, 0)
                numeric = s.numeric and ch.isdigit() and stem[-1] != "'"
            can_end = trie is None or numeric or trie.terminal[node] or self.xterminal[xnode]
            return WordState(
                node, xnode, stem + ch, numeric, can_end, s.prev, s.grams, s.pairs, s.box + ch, s.boxes
            )
        if kind == APOS:
            if not s.stem:
                return s._replace(box=s.box + "'")
            if s.stem[-1] == "'":  # a second ': the word ended at the first
                return self._finish_word(q, s)._replace(box=s.box + "'")
            trie = self.tries[q]
            node = trie.children[s.node].get(tok, trie.dead) if trie else 0
            xnode = self.xchildren[s.xnode].get(tok, 0)
            return s._replace(node=node, xnode=xnode, stem=s.stem + "'", box=s.box + "'")
        if tok == END:
            return s  # the caption is over; `trim` reads the state as it was
        if s.stem:
            s = self._finish_word(q, s)
        if tok == SEP:
            box = s.box.strip()
            return s._replace(box="", boxes=s.boxes | {box} if box else s.boxes)
        return s._replace(box=s.box + rules.char[tok])

    def _finish_word(self, q: int, s: WordState) -> WordState:
        word = s.stem.rstrip("'")
        grams, pairs = s.grams, s.pairs
        if s.prev[0]:
            grams = grams | {(*s.prev, word)}
            pairs = pairs | {s.prev}
        return WordState(0, self.xroot[q], "", False, True, (s.prev[1], word), grams, pairs, s.box, s.boxes)

    def can_stop(self, s: WordState) -> bool:
        """May the caption end in this state?"""
        if s.stem and (not s.can_end or s.blocked()):
            return False
        box = s.box.strip()
        return not (box and box in s.boxes)

    # ---- masking ---------------------------------------------------------------------------

    def mask(
        self, logits: torch.Tensor, rows: Sequence[int], qs: Sequence[int], states: Sequence[WordState]
    ) -> None:
        """Add PENALTY, in place, to the logits [R, V] of what would break a rule, for the given
        rows (row rows[k] of request qs[k] in state states[k])."""
        rules = self.rules
        device = logits.device
        penalties: list[torch.Tensor] = []
        anything = False
        for q, s in zip(qs, states, strict=True):
            trie = self.tries[q]
            stem = s.stem
            end_ok = not stem or (s.can_end and not s.blocked())
            points: list[int] = []  # symbols masked on top of the state's table row
            if trie is None:
                table = rules.plain_flags
                index = 0 if end_ok else 1 + (stem[-1] == "'")
            else:
                assert trie.forbid4 is not None
                table = trie.forbid4
                digits_ok = not stem or (s.numeric and stem[-1] != "'")
                index = 4 * s.node + 2 * digits_ok + end_ok
                if s.prev in s.pairs:
                    points = self._dead_ends(trie, q, s)
            box = s.box.strip()
            if box and box in s.boxes:
                points += [SEP, END]
            xnode = s.xnode
            if points:
                penalty = self._penalty(table, index, xnode, points, device)
            else:
                # A state's penalty row depends on its table row and its node in the request's
                # own words only: kept (per generator without own words, else per batch), so
                # a step is one addition, not several small array operations.
                cache = self._rows if xnode else rules.rows
                key = (id(table), index, xnode)
                penalty = cache.get(key)  # type: ignore[assignment]
                if penalty is None:
                    penalty = cache[key] = self._penalty(table, index, xnode, points, device)
                    if len(rules.rows) > ROWS_KEPT:
                        rules.rows.clear()
            anything = anything or index != 0 or table is not rules.plain_flags or bool(points)
            penalties.append(penalty)
        if not anything:
            return  # no lexicon, and every word may end: nothing to mask
        penalty = penalties[0] if len(penalties) == 1 else torch.stack(penalties)
        if len(rows) == logits.size(0):
            logits += penalty
        else:
            logits[torch.tensor(rows, device=device)] += penalty

    def _penalty(
        self, table: np.ndarray, index: int, xnode: int, points: Sequence[int], device: torch.device
    ) -> torch.Tensor:
        forbid = table[index].copy()
        if xnode:  # node 0 of the own words is the dead one, which forbids everything
            forbid &= self.xforbid[xnode]
        forbid[list(points)] = True
        return torch.from_numpy(np.multiply(forbid, np.float32(PENALTY), dtype=np.float32)).to(device)

    def _dead_ends(self, trie: Trie, q: int, s: WordState) -> list[int]:
        """Symbols after which every way on ends a word that repeats a 3-gram (every word the
        tries hold under the spelling is one of those): masked now, so a row never reaches a
        state with nothing left to write. Only called when the last two words began a 3-gram."""
        points: list[int] = []
        stem = s.stem
        third = {w for a, b, w in s.grams if (a, b) == s.prev}  # the words that may not come next
        index = self.rules.index
        for ch in {w[len(stem)] for w in third if len(w) > len(stem) and w.startswith(stem)}:
            spelled = stem + ch
            if spelled.isdigit():
                continue  # a number can always go on
            if ch == "'" and s.can_end and stem.rstrip("'") not in third:
                continue  # the ' may be a quote mark after a word that may end
            tok = index[ch]
            node = trie.children[s.node].get(tok, trie.dead)
            xnode = self.xchildren[s.xnode].get(tok, 0)
            under = [w for w in third if w.startswith(spelled)]
            in_trie = sum(
                trie.terminal[_walk(trie.children, 0, (index[c] for c in w), trie.dead)] for w in under
            )
            in_own = sum(
                self.xterminal[_walk(self.xchildren, self.xroot[q], (index[c] for c in w), 0)] for w in under
            )
            if trie.below[node] <= in_trie and self.xbelow[xnode] <= in_own:
                points.append(tok)
        return points

    # ---- finished captions -----------------------------------------------------------------

    def trim(self, q: int, ids: list[int], n_prompt: int, s: WordState) -> list[int]:
        """A caption that stopped (length cap) where it could not have ended: drop its last,
        unfinished word, then words of a last box that repeats an earlier one. The prompt is
        never touched. `ids`: prompt + generated, without <end>."""
        if self.can_stop(s):
            return ids
        kind = self.rules.kind
        out = list(ids)
        if s.stem and (not s.can_end or s.blocked()):
            while len(out) > n_prompt and kind[out[-1]] != OTHER:
                out.pop()
        while len(out) > n_prompt and out[-1] != SEP:
            box = _last_box(out, self.rules.char).strip()
            if not (box and box in s.boxes):
                break
            while len(out) > n_prompt and kind[out[-1]] != ALNUM and out[-1] != SEP:
                out.pop()
            while len(out) > n_prompt and kind[out[-1]] != OTHER:
                out.pop()
        return out


def _last_box(ids: Sequence[int], char: Sequence[str]) -> str:
    text = []
    for i in reversed(ids):
        if i == SEP:
            break
        text.append(char[i])
    return "".join(reversed(text))
