"""Which text tower reads a text (pure): CLIP's own for plain English, the multilingual one for anything else.

`auto` (the default when a text model is loaded): a text whose letters are all plain ASCII Latin and that has no
frequent function word of another Latin-script language goes to CLIP's own text tower (trained on English, best
there); text with any other letter (CJK, kana, hangul, Cyrillic, Greek, Arabic, Hebrew, Devanagari, Thai, accented
Latin such as 'café' or 'Straße') or with such foreign words, and mixed text, goes to the multilingual tower.
A text without any letter (digits, emoji or punctuation only) stays with CLIP's tower, whose byte-level tokenizer
reads every symbol. `multilingual` sends every text to the multilingual tower.
"""

from __future__ import annotations

import re
import string

ROUTING_CHOICES = ("auto", "multilingual")
CLIP_TOWER = "clip"
MULTILINGUAL_TOWER = "multilingual"

#: Frequent short words of other languages written in plain Latin letters that do not occur in English text.
FOREIGN_WORDS = frozenset(
    "und der das ein eine einem einen mit auf im ist nicht le les une avec sur dans et est pas el los las "
    "una unos con del y es il gli della delle nel sulla uma não com och är het een".split()
)
_WORD_EDGES = ".,;:!?'\"()[]{}"
_CJK_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))
_KANA_HANGUL = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uac00-\ud7af\u1100-\u11ff]")


def has_foreign_words(text: str) -> bool:
    """True when a text of two or more words holds a frequent function word of another Latin-script language."""
    words = {w.strip(_WORD_EDGES).casefold() for w in text.split()}
    return len(words) >= 2 and bool(words & FOREIGN_WORDS)


def is_plain_english(text: str) -> bool:
    """True when every letter is an ASCII Latin letter and no foreign function word is present (no letter: True)."""
    if any(ch.isalpha() and ch not in string.ascii_letters for ch in text):
        return False
    return not has_foreign_words(text)


def has_letters(text: str) -> bool:
    """True when the text holds at least one letter of any script."""
    return any(ch.isalpha() for ch in text)


def route(text: str, mode: str = "auto") -> str:
    """'clip' or 'multilingual': the tower that reads this text under a routing mode ('auto' or 'multilingual')."""
    if mode not in ROUTING_CHOICES:
        raise ValueError(f"unknown text routing {mode!r}: use one of {', '.join(ROUTING_CHOICES)}")
    if mode == MULTILINGUAL_TOWER:
        return MULTILINGUAL_TOWER
    return CLIP_TOWER if is_plain_english(text) else MULTILINGUAL_TOWER


def is_chinese(text: str) -> bool:
    """True when the text holds Han characters and no Japanese kana or Korean hangul (so it reads as Chinese)."""
    han = any(any(lo <= ord(ch) <= hi for lo, hi in _CJK_RANGES) for ch in text)
    return han and not _KANA_HANGUL.search(text)

