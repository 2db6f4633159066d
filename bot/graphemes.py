"""What a reader sees as one character, and the little Unicode the renderer needs beyond that.

A caption is drawn cluster by cluster: an emoji with a skin tone, a family joined with
zero-width joiners, a flag (two regional indicators, or a black flag and tag letters), a
letter with its combining marks. A cluster is never split between fonts, lines or an
ellipsis. This is a compact form of Unicode's extended grapheme clusters (UAX #29) that covers
what chat users type; Hangul jamo and Indic conjuncts need no special case here because NFC
composes the former and each script's font shapes the latter.
"""

from __future__ import annotations

import unicodedata

ZWJ = "\u200d"
KEYCAP = "\u20e3"
BLACK_FLAG = "\U0001f3f4"
CANCEL_TAG = "\U000e007f"

# Emoji that are drawn as pictures by default (Emoji_Presentation=Yes) below U+1F000; everything
# from U+1F000 on that an emoji font has is treated the same way.
_BMP_EMOJI = frozenset(
    [0x231A, 0x231B, 0x23E9, 0x23EA, 0x23EB, 0x23EC, 0x23F0, 0x23F3, 0x25FD, 0x25FE, 0x2614, 0x2615]
    + list(range(0x2648, 0x2654))
    + [0x267F, 0x2693, 0x26A1, 0x26AA, 0x26AB, 0x26BD, 0x26BE, 0x26C4, 0x26C5, 0x26CE, 0x26D4, 0x26EA]
    + [0x26F2, 0x26F3, 0x26F5, 0x26FA, 0x26FD, 0x2705, 0x270A, 0x270B, 0x2728, 0x274C, 0x274E]
    + [0x2753, 0x2754, 0x2755, 0x2757, 0x2795, 0x2796, 0x2797, 0x27B0, 0x27BF, 0x2B1B, 0x2B1C]
    + [0x2B50, 0x2B55]
)


def is_variation_selector(c: str) -> bool:
    o = ord(c)
    return 0xFE00 <= o <= 0xFE0F or 0xE0100 <= o <= 0xE01EF


def is_emoji_modifier(c: str) -> bool:
    return 0x1F3FB <= ord(c) <= 0x1F3FF


def is_regional_indicator(c: str) -> bool:
    return 0x1F1E6 <= ord(c) <= 0x1F1FF


def is_tag(c: str) -> bool:
    return 0xE0020 <= ord(c) <= 0xE007F


def is_pictographic(c: str) -> bool:
    """Roughly Extended_Pictographic: a character that can start or continue an emoji sequence."""
    o = ord(c)
    if 0x1F000 <= o <= 0x1FAFF or o in _BMP_EMOJI:
        return True
    # Dingbats, arrows, misc symbols and technical signs that become emoji with U+FE0F.
    return (0x2190 <= o <= 0x21FF or 0x2300 <= o <= 0x23FF or 0x2600 <= o <= 0x27BF) or o in (
        0x00A9,
        0x00AE,
        0x203C,
        0x2049,
        0x2122,
        0x2139,
        0x24C2,
        0x2934,
        0x2935,
        0x2B05,
        0x2B06,
        0x2B07,
        0x3030,
        0x303D,
        0x3297,
        0x3299,
    )


def _extends(cluster: str, c: str) -> bool:
    """Whether `c` belongs to the cluster before it."""
    if unicodedata.category(c) in ("Mn", "Mc", "Me") or c == ZWJ or is_variation_selector(c):
        return True
    if is_emoji_modifier(c) or is_tag(c):
        return True
    last = cluster[-1]
    if last == ZWJ and is_pictographic(c) and len(cluster) > 1:
        return True
    if is_regional_indicator(c) and is_regional_indicator(cluster[0]) and len(cluster) == 1:
        return True  # a flag is a pair of regional indicators
    return False


def clusters(text: str) -> list[str]:
    """`text` cut into what a reader sees as single characters."""
    out: list[str] = []
    for c in text:
        if out and c not in " \n" and out[-1] not in (" ", "\n") and _extends(out[-1], c):
            out[-1] += c
        else:
            out.append(c)
    return out


def is_emoji(cluster: str) -> bool:
    """Whether the cluster is meant as a colour emoji (default or asked-for emoji presentation)."""
    first = cluster[0]
    o = ord(first)
    if "\ufe0e" in cluster:
        return False  # text presentation asked for
    if "\ufe0f" in cluster or KEYCAP in cluster or ZWJ in cluster and is_pictographic(first):
        return True
    if len(cluster) > 1 and (is_emoji_modifier(cluster[1]) or is_tag(cluster[1])):
        return True
    return o in _BMP_EMOJI or (0x1F000 <= o <= 0x1FAFF and not 0x1F100 <= o <= 0x1F1E5)


def keeps_format_character(text: str, i: int) -> bool:
    """Whether the invisible (format) character text[i] is part of an emoji and must stay.

    A zero-width joiner between two pictographs makes one emoji of them (👨‍👩‍👧); tag letters
    after a black flag make a subdivision flag (🏴󠁧󠁢󠁳󠁣󠁴󠁿). Anywhere else such characters only hide
    what a text says, and cleaning drops them.
    """
    c = text[i]
    if c == ZWJ:
        j = i - 1
        while j >= 0 and (is_variation_selector(text[j]) or is_emoji_modifier(text[j])):
            j -= 1
        return j >= 0 and is_pictographic(text[j]) and i + 1 < len(text) and is_pictographic(text[i + 1])
    if is_tag(c):
        j = i
        while j > 0 and is_tag(text[j - 1]):
            j -= 1
        return j > 0 and text[j - 1] == BLACK_FLAG
    return False


# Where a line may break without a space: between ideographs and kana (Chinese and Japanese
# have no spaces), and between emoji. Not before closing punctuation, not after opening. Korean
# puts spaces between words, so its words stay whole like Latin ones.
_NO_BREAK_BEFORE = frozenset(
    "、。，．,.!?！？：；:;)]}）〕」』】〉》ー…‥ぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ々〻゛゜"
)
_NO_BREAK_AFTER = frozenset("([{（〔「『【〈《")


def is_wide(cluster: str) -> bool:
    """CJK characters and emoji: a line may break on either side of them."""
    o = ord(cluster[0])
    return (
        0x2E80 <= o <= 0x30FF  # CJK radicals, CJK punctuation, kana
        or 0x3100 <= o <= 0x312F  # Bopomofo
        or 0x31F0 <= o <= 0x9FFF  # kana extensions, enclosed CJK, compatibility, ideographs
        or 0xF900 <= o <= 0xFAFF  # CJK compatibility ideographs
        or 0xFF00 <= o <= 0xFF60  # fullwidth forms
        or 0x20000 <= o <= 0x3FFFF  # ideograph extensions
        or is_emoji(cluster)
    )


def break_atoms(word: str) -> list[str]:
    """A space-free word cut where a line may break inside it (CJK, emoji); most words stay whole."""
    if word.isascii():
        return [word]
    parts = clusters(word)
    if not any(is_wide(p) for p in parts):
        return [word]
    atoms: list[str] = []
    for part in parts:
        if atoms:
            prev = atoms[-1]
            breakable = (is_wide(part) or is_wide(prev[-1])) and part[0] not in _NO_BREAK_BEFORE
            if breakable and prev[-1] not in _NO_BREAK_AFTER:
                atoms.append(part)
                continue
            atoms[-1] = prev + part
        else:
            atoms.append(part)
    return atoms


# Scripts with upper and lower case in everyday use: the only ones a caption's capitals touch.
# (Georgian has capitals that few fonts draw and nobody writes in; Cherokee's "lower case" is a
# recent addition that upper-casing would undo.)
_CASED_SCRIPTS = ("LATIN", "GREEK", "CYRILLIC", "ARMENIAN")


def upper_cased(text: str) -> str:
    """`text` in capitals where its script has them; other scripts left exactly as typed."""
    if text.isascii():
        return text.upper()
    out = []
    for c in text:
        if c.islower() and any(s in unicodedata.name(c, "") for s in _CASED_SCRIPTS):
            out.append(c.upper())
        else:
            out.append(c)
    return "".join(out)
