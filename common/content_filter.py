"""The content filter: which words the bot never writes and never accepts from users.

The list is better-profanity's maintained word list and a few phrases telling someone to kill
themselves (SELF_HARM), plus `[filter] extra_words`, minus
`[filter] allowed_words` (everyday words the list also bans, like "god" or "stupid": a meme
bot that refuses "stupid" is useless). It is built once per process.

Matching is by whole word, so "class" never matches "ass", and leetspeak is folded the way
better-profanity folds it ("sh1t", "5hit" and "$hit" are "shit"). The same set is handed to
the decoder as `GenerationRequest.banned_words`, which stops the model from completing a
banned word, and is used here to check finished captions and the users' own text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import better_profanity

from common.config import FilterConfig

WORDLIST = Path(better_profanity.__file__).parent / "profanity_wordlist.txt"
# better-profanity's leetspeak map, folded the other way: each look-alike to its letter.
# ("@" and "$" only matter in typed text, see LETTER_SYMBOLS; the decoder splits words on them.)
LEET = str.maketrans(
    {"4": "a", "@": "a", "1": "i", "l": "i", "0": "o", "3": "e", "5": "s", "$": "s", "7": "t", "v": "u"}
)
# Symbols that stand for letters inside a word ("$hit", "a$$"); they would split it otherwise.
LETTER_SYMBOLS = str.maketrans({"$": "s", "@": "a"})
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters and digits, inner apostrophes kept ("don't")
SEPARATORS = re.compile(r"[\s._-]+")  # what may stand between the words of a phrase entry
MASK = "*"
# Telling someone to kill themselves: not profanity, so not on better-profanity's list, and the
# model wrote it ("kill yourself until you get the best friend zone", two-buttons). Banned like
# the list's entries: phrases drop the candidates that say them, "kys" is never completed.
SELF_HARM = ("kill yourself", "kill urself", "kill ur self", "kill your self", "kys", "go die")


def fold(word: str) -> str:
    """The form two spellings of one word share: lower case, leetspeak undone, outer quotes gone."""
    return word.lower().strip("'").translate(LEET)


def words(text: str) -> list[str]:
    """The words of `text`, lower case, as the decoder sees them (a word is letters, digits and ')."""
    return [w.lower() for w in WORD.findall(text)]


class BannedWords(tuple[str, ...]):
    """The banned single words, as the tuple `GenerationRequest.banned_words` expects, but with
    an O(1), leetspeak-aware `in`: the decoder asks `word in banned` at every step of every row."""

    _folded: frozenset[str]

    def __new__(cls, entries: Iterable[str]) -> BannedWords:
        unique = sorted({e.lower() for e in entries if e})
        self = super().__new__(cls, unique)
        self._folded = frozenset(fold(e) for e in unique)
        return self

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and fold(word) in self._folded


@dataclass(frozen=True)
class ContentFilter:
    """`banned`: single words (for the decoder and the checks); `phrases`: entries of several
    words ("2 girls 1 cup", "ass-fucker"), checked on finished text only."""

    banned: BannedWords
    phrases: frozenset[tuple[str, ...]]

    @classmethod
    def from_config(cls, config: FilterConfig, wordlist: Path = WORDLIST) -> ContentFilter:
        entries = [line.strip().lower() for line in wordlist.read_text(encoding="utf-8").splitlines()]
        allowed = {fold(w) for w in config.allowed_words} - {fold(w) for w in config.extra_words}
        entries += [w.strip().lower() for w in config.extra_words] + list(SELF_HARM)
        single: list[str] = []
        phrases: set[tuple[str, ...]] = set()
        for entry in entries:
            parts = tuple(fold(w) for w in words(entry))
            if not parts:
                continue
            if len(parts) == 1 and parts[0] == fold(entry):
                if parts[0] not in allowed:
                    single.append(entry)
            elif "".join(parts) == fold(SEPARATORS.sub("", entry)):
                phrases.add(parts)
            # else: spellings with symbols ("sh!+"): the words they split into are not the entry
        return cls(BannedWords(single), frozenset(phrases))

    def find(self, text: str) -> str | None:
        """The first banned word or phrase in `text` (as written there), or None."""
        found = words(text.translate(LETTER_SYMBOLS))
        for word in found:
            if word in self.banned:
                return word
        folded = [fold(w) for w in found]
        for phrase in self.phrases:
            n = len(phrase)
            for i in range(len(folded) - n + 1):
                if tuple(folded[i : i + n]) == phrase:
                    return " ".join(found[i : i + n])
        return None

    def mask(self, text: str) -> str:
        """`text` with every banned single word replaced by asterisks of the same length."""
        return WORD.sub(lambda m: MASK * len(m[0]) if m[0].lower() in self.banned else m[0], text)
