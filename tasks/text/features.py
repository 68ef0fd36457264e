"""Vectorized per-document text features: what the quality rules (`tasks.text.filters`) and dedup read.

    doc = TextFeatures(text)
    doc.n_words, doc.letters, doc.lines, doc.script_share(("zh",))

A `TextFeatures` computes each feature on first use and keeps it, so rules that run
cheapest first never pay for what a failed earlier rule made unnecessary (a too-short
document is never converted to code points), and rules that read the same feature share
one computation. Speed comes from one vectorized pass: the text as UTF-32 code points, a
lookup table of character classes (space / other / punctuation / letter per script), word
boundaries and 64-bit word hashes with numpy.

Decisions worth knowing:
- A "word" is a run of non-space characters, except that every Han or Kana character is a
  word of its own: Chinese and Japanese have no spaces to split on, and a character is the
  unit Chinese length limits mean. For text without CJK this equals ``str.split()``.
- Script share is a cheap script check, not language ID: the share of letters that belong
  to the scripts of some languages (Latin for en/de/fr..., Han for zh, Cyrillic for
  ru/bg...). It tells Chinese from English or Russian, not English from French; a real
  language-ID model (fastText lid.176) is a heavy dependency and ~100x the cost per document.
- Word keys carry a word's hash in the high 48 bits and its length in the low 16, so the
  n-gram rule gets both from one sort (`top_key_chars`, `gram_keys`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any, Generic, TypeVar

import numpy as np

# Character classes of the lookup table; letters of a tracked script get the ids after LETTER.
SPACE, OTHER, PUNCT, LETTER = 0, 1, 2, 3  # OTHER: digits, controls, unassigned; PUNCT: punctuation and symbols
SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "latin": ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x1E00, 0x1EFF)),
    "cyrillic": ((0x400, 0x52F),),
    "greek": ((0x370, 0x3FF), (0x1F00, 0x1FFF)),
    "arabic": ((0x600, 0x6FF), (0x750, 0x77F)),
    "hebrew": ((0x590, 0x5FF),),
    "devanagari": ((0x900, 0x97F),),
    "thai": ((0xE00, 0xE7F),),
    "han": ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FFFF)),
    "kana": ((0x3040, 0x30FF),),
    "hangul": ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF)),
}
SCRIPT_CLASS = {name: LETTER + 1 + i for i, name in enumerate(SCRIPTS)}
N_CLASSES = LETTER + 1 + len(SCRIPTS)
_CLASSIFIED = 0x30000  # code points past the CJK extensions are all OTHER: saves building 1.1 M entries
_LATIN_LANGUAGES = "en de fr es it pt nl pl sv da no fi cs sk hu ro tr vi id ms ca hr sl et lv lt"
LANGUAGE_SCRIPTS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_LATIN_LANGUAGES.split(), ("latin",)),
    **dict.fromkeys(("ru", "bg", "uk", "sr", "be", "kk", "mk"), ("cyrillic",)),
    "zh": ("han",), "ja": ("han", "kana"), "ko": ("hangul", "han"), "el": ("greek",),
    "ar": ("arabic",), "fa": ("arabic",), "ur": ("arabic",), "he": ("hebrew",),
    "hi": ("devanagari",), "mr": ("devanagari",), "ne": ("devanagari",), "th": ("thai",),
    **{script: (script,) for script in SCRIPTS},  # script names work as "languages" too
}
"""Language code -> scripts its letters are written in (for the language-share rule)."""
T = TypeVar("T")


class lazy(Generic[T]):  # noqa: N801 - used like `functools.cached_property`
    """`functools.cached_property` without its lock (Python 3.11 takes one per first access: ~0.4 vs ~0.9 us).

    A non-data descriptor: the first access stores the value in the instance's ``__dict__``,
    which then shadows the descriptor, so later reads are plain attribute lookups.
    """

    def __init__(self, compute: Callable[[Any], T]) -> None:
        self.compute = compute
        self.name = compute.__name__
        self.__doc__ = compute.__doc__

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        if obj is None:  # looked up on the class (help(), inspect): the descriptor itself
            return self
        value = obj.__dict__[self.name] = self.compute(obj)
        return value


class TextFeatures:
    """One document's features, each computed on first use and then shared by every rule that reads it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.chars = len(text)

    @lazy
    def cps(self) -> np.ndarray:
        """Code points (uint32)."""
        return code_points(self.text)

    @lazy
    def class_counts(self) -> np.ndarray:
        """Characters per class (index: SPACE, OTHER, PUNCT, LETTER, then one per script)."""
        return np.bincount(self.classes, minlength=N_CLASSES)

    @lazy
    def classes(self) -> np.ndarray:
        return char_classes(self.cps)

    @lazy
    def spans(self) -> tuple[np.ndarray, np.ndarray]:
        """Start and end of every word (`word_spans`)."""
        return word_spans(self.classes)

    @lazy
    def n_words(self) -> int:
        return len(self.spans[0])

    @lazy
    def word_chars(self) -> int:
        """Non-space characters."""
        return self.chars - int(self.class_counts[SPACE])

    @lazy
    def letters(self) -> int:
        """Letters and combining marks, of any script."""
        return int(self.class_counts[LETTER:].sum())

    @lazy
    def word_keys(self) -> np.ndarray:
        """Per word: hash and length (`word_keys`)."""
        return word_keys(self.cps, *self.spans)

    @lazy
    def lines(self) -> list[str]:
        """Non-empty lines, stripped."""
        # map/filter keep the loop in C: a Python loop over lines was a quarter of the filter time.
        return list(filter(None, map(str.strip, self.text.split("\n"))))

    def script_share(self, languages: Iterable[str]) -> float:
        """Share of the letters written in the scripts of `languages` (0 when there are no letters)."""
        if not self.letters:
            return 0.0
        classes = {SCRIPT_CLASS[s] for lang in languages for s in LANGUAGE_SCRIPTS[lang]}
        return sum(int(self.class_counts[c]) for c in classes) / self.letters


# ---------------------------------------------------------------- vectorized text primitives (shared with dedup)

_P = 0x9E3779B97F4A7C15  # odd, so invertible mod 2**64: span hashes come from prefix sums
_P_INV = pow(_P, -1, 1 << 64)
_GRAM_MULT = np.uint64(0xD6E8FEB86659FD93)
LEN_MASK = np.uint64(0xFFFF)
"""The low 16 bits of a word or n-gram key: its length in characters (capped)."""
_powers: tuple[np.ndarray, np.ndarray] = (np.ones(1, np.uint64), np.ones(1, np.uint64))


def code_points(text: str) -> np.ndarray:
    """The text as an array of Unicode code points (uint32), one C-level copy."""
    # surrogatepass: JSON may carry lone surrogates ("\\ud800"), which strict encoding rejects.
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")


@cache
def _class_table() -> np.ndarray:
    """Class of every code point, built once (~0.2 s); letters include combining marks (Hindi vowel signs)."""
    table = np.full(0x110000, OTHER, dtype=np.uint8)
    major = {"L": LETTER, "M": LETTER, "P": PUNCT, "S": PUNCT}
    table[:_CLASSIFIED] = [major.get(unicodedata.category(chr(c))[0], OTHER) for c in range(_CLASSIFIED)]
    table[[c for c in range(_CLASSIFIED) if chr(c).isspace()]] = SPACE
    for script, ranges in SCRIPTS.items():
        for lo, hi in ranges:
            seg = table[lo : hi + 1]
            seg[seg == LETTER] = SCRIPT_CLASS[script]
    return table


def char_classes(cps: np.ndarray) -> np.ndarray:
    """Class id per code point: SPACE, OTHER, PUNCT, LETTER or the class of a tracked script."""
    return np.take(_class_table(), cps)  # measured: 2.5x faster than fancy indexing


def word_spans(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) of every word: runs of non-space, each Han/Kana character alone."""
    space = classes == SPACE
    breaks = space | (classes == SCRIPT_CLASS["han"]) | (classes == SCRIPT_CLASS["kana"])
    cut = np.ones(len(classes) + 1, dtype=bool)  # cut[i]: a word boundary lies before position i
    cut[1:-1] = breaks[1:] | breaks[:-1]
    solid = ~space
    return np.flatnonzero(cut[:-1] & solid), np.flatnonzero(cut[1:] & solid) + 1


def span_hashes(cps: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """64-bit hash of each span ``cps[s:e]``, all at once: polynomial hashes from one prefix sum.

    hash(s, e) = sum_j c_j P^(e-1-j) = P^(e-1) * (S[e] - S[s]) with S the prefix sums of
    c_j P^-j; uint64 arithmetic wraps, i.e. works mod 2**64. Equal spans hash equal
    wherever they are, in any process (no Python `hash` salt). Finished with `mix64`.
    """
    n = len(cps)
    pw, inv = _power_tables(n + 1)
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum((cps.astype(np.uint64) + np.uint64(1)) * inv[:n], out=prefix[1:])
    return mix64((prefix[ends] - prefix[starts]) * pw[ends - 1])


def word_keys(cps: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per word: its hash in the high 48 bits, its length (capped at 65535) in the low 16."""
    return (span_hashes(cps, starts, ends) & ~LEN_MASK) | np.minimum(ends - starts, 0xFFFF).astype(np.uint64)


def gram_keys(keys: np.ndarray, n: int) -> np.ndarray:
    """Keys of the word n-grams: combined hashes in the high bits, summed lengths (capped) in the low 16."""
    m = len(keys) - n + 1
    h = keys[:m] & ~LEN_MASK
    length = keys[:m] & LEN_MASK
    for j in range(1, n):
        h = h * _GRAM_MULT + (keys[j : j + m] & ~LEN_MASK)
        length = length + (keys[j : j + m] & LEN_MASK)
    return (mix64(h) & ~LEN_MASK) | np.minimum(length, LEN_MASK)


def top_key_chars(keys: np.ndarray) -> int:
    """Characters covered by the most frequent key (ties: the longest), if it repeats; else 0."""
    uniq, counts = np.unique(keys, return_counts=True)
    top = int(counts.max())
    if top < 2:
        return 0
    return top * int((uniq[counts == top] & LEN_MASK).max())


def max_key_chars(keys: np.ndarray) -> int:
    """The largest (count x length) over the keys: no n-gram of these words covers more than n x this."""
    uniq, counts = np.unique(keys, return_counts=True)
    return int((counts * (uniq & LEN_MASK)).max())


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every output bit depends on every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i mod 2**64 for i < n, grown by doubling and shared by all calls."""
    global _powers
    pw, inv = _powers
    if len(pw) < n:
        size = max(n, 2 * len(pw))
        pw = np.full(size, _P, dtype=np.uint64)
        inv = np.full(size, _P_INV, dtype=np.uint64)
        pw[0] = inv[0] = 1
        pw, inv = np.cumprod(pw), np.cumprod(inv)  # wraps mod 2**64, as wanted
        _powers = (pw, inv)
    return pw, inv
