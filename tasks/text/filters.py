"""Document quality rules in the style of Gopher (Rae et al. 2021) and datatrove, and the drop counts.

    keep, reason = apply_filters(text, FilterConfig())    # (True, None) or (False, "too_short")

Each rule is one small `Rule`: its drop reason, the `FilterConfig` thresholds it reads and a
check over shared per-document features (`tasks.text.features.TextFeatures`, each computed
once on first use). `RULES` lists them cheapest first; `apply_filters` stops at the first
rule a document breaks, so its reason names that rule, and `REASONS` is the rules' order.
`FilterStats` counts documents and characters in and out per source and drops per reason,
merges across workers and renders the stage report.

Adding a rule: a threshold field on `FilterConfig` (None = off) and a function decorated
with `@rule("reason", "field")` placed in `RULES`; or, without editing this module, pass
``rules=(*RULES, my_rule)`` to `apply_filters` / `filter_documents`.

Decisions worth knowing:
- `max_non_alpha_ratio` is measured on characters (share of non-space characters that are
  not letters or combining marks), not Gopher's words-with-a-letter share, so it means the
  same for Chinese, where punctuation is a separate character.
- Language share is a script check (`TextFeatures.script_share`), not language ID.
- Top n-gram repetition is Gopher's "characters in the most frequent n-gram" (ties: the
  longest), on 64-bit word hashes, skipped when the most frequent word alone proves no
  n-gram can pass the limit (n-gram share <= n x word share).
- Every threshold set to None turns its rule off; `FilterConfig.disabled()` turns all off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from itertools import repeat
from typing import Any

from kiln.errors import KilnError
from tasks.text.features import LANGUAGE_SCRIPTS, TextFeatures, gram_keys, max_key_chars, top_key_chars

_BULLETS = ("•", "●", "○", "▪", "◦", "‣", "⁃", "·", "-", "*")
_ELLIPSES = ("...", "…")


@dataclass(frozen=True)
class FilterConfig:
    """Quality thresholds; None turns a check off. Defaults keep ordinary Wikipedia, WuDao and Pile text."""

    min_chars: int | None = 200
    """Shorter documents are dropped (stubs, navigation pages); same default as the clean stage."""
    max_chars: int | None = 5_000_000
    """Longer documents are dropped; high enough for whole books (Pile Books3/PG-19 run to ~1-2 M)."""
    min_words: int | None = 50
    """Gopher's minimum word count (each Han/Kana character is a word)."""
    max_symbol_ratio: float | None = 0.1
    """Gopher: ``#`` and ellipses per word (hashtag spam, truncated snippets)."""
    max_non_alpha_ratio: float | None = 0.45
    """Share of non-space characters that are not letters (number tables, code dumps, markup). On the
    gensim enwiki sample the worst article is 0.19; Chinese prose is ~0.15 (full-width punctuation)."""
    max_bullet_start_ratio: float | None = 0.9
    """Gopher: share of lines that start with a bullet (link lists, menus)."""
    max_ellipsis_end_ratio: float | None = 0.3
    """Gopher: share of lines ending in an ellipsis (truncated previews)."""
    max_duplicate_line_fraction: float | None = 0.3
    """Gopher: share of non-empty lines that repeat an earlier line."""
    max_duplicate_line_char_fraction: float | None = 0.2
    """Gopher: share of characters in lines that repeat an earlier line."""
    max_top_2gram_fraction: float | None = 0.20
    """Gopher: share of word characters covered by the most frequent word 2-gram."""
    max_top_3gram_fraction: float | None = 0.18
    """As above for 3-grams."""
    max_top_4gram_fraction: float | None = 0.16
    """As above for 4-grams."""
    languages: tuple[str, ...] = ()
    """Expected languages or scripts (``("zh",)``, ``("en", "de")``, ``("latin",)``); empty = check off."""
    min_language_share: float = 0.5
    """Minimum share of letters in the scripts of `languages`."""
    keep_dropped: int = 20
    """Documents kept per drop reason in the artifact's ``dropped/<reason>.parquet`` (the first in input
    order), to see what a rule removes; 0 writes none. Small: it is a sample for people, not a corpus."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith(("max_", "min_")) and value is not None and value < 0:
                raise KilnError(f"filters.{f.name} must be >= 0 or unset, got {value}")
            is_fraction = any(word in f.name for word in ("ratio", "fraction", "share"))
            if is_fraction and value is not None and value > 1:
                raise KilnError(f"filters.{f.name} is a fraction in [0, 1], got {value}")
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise KilnError(f"filters.min_chars {self.min_chars} > filters.max_chars {self.max_chars}")
        if self.keep_dropped < 0:
            raise KilnError(f"filters.keep_dropped must be >= 0, got {self.keep_dropped}")
        unknown = [lang for lang in self.languages if lang not in LANGUAGE_SCRIPTS]
        if unknown:
            raise KilnError(f"filters.languages: unknown {unknown}; use codes from {sorted(LANGUAGE_SCRIPTS)}")

    @classmethod
    def disabled(cls, **thresholds: Any) -> FilterConfig:
        """Every check off, except the given thresholds (tests turn on one check at a time)."""
        names = [f.name for f in fields(cls) if f.name.startswith(("max_", "min_"))]
        off: dict[str, Any] = {name: None for name in names if name != "min_language_share"}
        return replace(cls(**off), **thresholds)


# ---------------------------------------------------------------- rules

Check = Callable[[TextFeatures, FilterConfig], bool]


@dataclass(frozen=True, eq=False)  # eq=False: hashed by identity, cheap as a cache key on every document
class Rule:
    """One quality rule: a document for which `breaks` is true is dropped for `reason`."""

    reason: str
    """Stable snake_case drop reason, counted in the report and naming ``dropped/<reason>.parquet``."""
    thresholds: tuple[str, ...]
    """The `FilterConfig` fields that switch it on: off when all are None (or empty); none = always on."""
    breaks: Check
    """True when the document breaks the rule; called only while the rule is on."""

    def is_on(self, cfg: FilterConfig) -> bool:
        return not self.thresholds or any(getattr(cfg, name) not in (None, ()) for name in self.thresholds)


def rule(reason: str, *thresholds: str) -> Callable[[Check], Rule]:
    """Decorator: the check function becomes a `Rule` dropping for `reason`, switched on by `thresholds`."""
    return lambda check: Rule(reason, thresholds, check)


def _over(value: float, limit: float | None) -> bool:
    """`value` is past `limit`; None is no limit (rules with two or three thresholds may have one off)."""
    return limit is not None and value > limit


@rule("too_short", "min_chars")
def too_short(doc: TextFeatures, cfg: FilterConfig) -> bool:
    return cfg.min_chars is not None and doc.chars < cfg.min_chars


@rule("too_long", "max_chars")
def too_long(doc: TextFeatures, cfg: FilterConfig) -> bool:
    return cfg.max_chars is not None and doc.chars > cfg.max_chars


@rule("too_few_words", "min_words")
def too_few_words(doc: TextFeatures, cfg: FilterConfig) -> bool:
    return cfg.min_words is not None and doc.n_words < cfg.min_words


@rule("symbol_ratio", "max_symbol_ratio")
def symbol_ratio(doc: TextFeatures, cfg: FilterConfig) -> bool:
    if not doc.n_words:
        return False
    symbols = doc.text.count("#") + doc.text.count("...") + doc.text.count("…")
    return _over(symbols / doc.n_words, cfg.max_symbol_ratio)


@rule("non_alpha_ratio", "max_non_alpha_ratio")
def non_alpha_ratio(doc: TextFeatures, cfg: FilterConfig) -> bool:
    return bool(doc.word_chars) and _over(1 - doc.letters / doc.word_chars, cfg.max_non_alpha_ratio)


@rule("language_share", "languages")
def language_share_rule(doc: TextFeatures, cfg: FilterConfig) -> bool:
    """Too few letters in the scripts of `languages` (threshold: `min_language_share`)."""
    return doc.script_share(cfg.languages) < cfg.min_language_share


@rule("bullet_lines", "max_bullet_start_ratio")
def bullet_lines(doc: TextFeatures, cfg: FilterConfig) -> bool:
    lines = doc.lines
    return bool(lines) and _over(sum(map(str.startswith, lines, repeat(_BULLETS))) / len(lines),
                                 cfg.max_bullet_start_ratio)


@rule("ellipsis_lines", "max_ellipsis_end_ratio")
def ellipsis_lines(doc: TextFeatures, cfg: FilterConfig) -> bool:
    lines = doc.lines
    return bool(lines) and _over(sum(map(str.endswith, lines, repeat(_ELLIPSES))) / len(lines),
                                 cfg.max_ellipsis_end_ratio)


@rule("duplicate_lines", "max_duplicate_line_fraction", "max_duplicate_line_char_fraction")
def duplicate_lines(doc: TextFeatures, cfg: FilterConfig) -> bool:
    """Gopher: every repeat after a line's first occurrence counts, by lines and by characters."""
    lines = doc.lines
    if not lines:
        return False
    unique = set(lines)
    if _over((len(lines) - len(unique)) / len(lines), cfg.max_duplicate_line_fraction):
        return True
    chars = sum(map(len, lines))
    return _over((chars - sum(map(len, unique))) / chars, cfg.max_duplicate_line_char_fraction)


@rule("top_ngram_repetition", "max_top_2gram_fraction", "max_top_3gram_fraction", "max_top_4gram_fraction")
def top_ngram_repetition(doc: TextFeatures, cfg: FilterConfig) -> bool:
    """Gopher: characters covered by the most frequent 2/3/4-gram, over all word characters."""
    keys = doc.word_keys if doc.n_words else None
    limits = [(n, lim) for n, lim in ((2, cfg.max_top_2gram_fraction), (3, cfg.max_top_3gram_fraction),
                                      (4, cfg.max_top_4gram_fraction)) if lim is not None and doc.n_words >= n]
    if keys is None or not limits:
        return False
    # An n-gram occurs at most as often as each of its words: most documents stop at this one sort.
    word_share = max_key_chars(keys) / doc.word_chars
    return any(n * word_share > limit and top_key_chars(gram_keys(keys, n)) / doc.word_chars > limit
               for n, limit in limits)


RULES: tuple[Rule, ...] = (
    too_short, too_long, too_few_words, symbol_ratio, non_alpha_ratio, language_share_rule,
    bullet_lines, ellipsis_lines, duplicate_lines, top_ngram_repetition,
)
"""The built-in rules, cheapest first: length needs no pass over the text, lines and n-grams the most."""
REASONS = tuple(r.reason for r in RULES)
"""Drop reasons in the order the rules run."""


def apply_filters(text: str, cfg: FilterConfig, rules: tuple[Rule, ...] = RULES) -> tuple[bool, str | None]:
    """Keep a document, ``(True, None)``, or drop it, ``(False, reason)`` for the first rule it breaks."""
    doc = TextFeatures(text)
    for r in _rules_on(cfg, rules):
        if r.breaks(doc, cfg):
            return False, r.reason
    return True, None


@lru_cache(maxsize=64)
def _rules_on(cfg: FilterConfig, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """The rules `cfg` switches on (asked once per config, not per document)."""
    return tuple(r for r in rules if r.is_on(cfg))


def language_share(text: str, languages: Iterable[str]) -> float:
    """Share of the letters of `text` written in the scripts of `languages` (0 when it has no letters)."""
    return TextFeatures(text).script_share(languages)


# ---------------------------------------------------------------- drop counts and report


@dataclass
class SourceCounts:
    """What one source sent in and what survived."""

    docs_in: int = 0
    chars_in: int = 0
    docs_out: int = 0
    chars_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    """Documents dropped per reason."""
    dropped_chars: Counter[str] = field(default_factory=Counter)
    """Characters dropped per reason."""


@dataclass
class FilterStats:
    """Per-source counts of documents and characters in/out and drops by reason; merge across workers."""

    sources: dict[str, SourceCounts] = field(default_factory=dict)

    def add(self, source: str, n_chars: int, reason: str | None) -> None:
        """Count one document of `source`: kept when `reason` is None, else dropped for `reason`."""
        c = self.sources.get(source)
        if c is None:
            c = self.sources[source] = SourceCounts()
        c.docs_in += 1
        c.chars_in += n_chars
        if reason is None:
            c.docs_out += 1
            c.chars_out += n_chars
        else:
            c.dropped[reason] += 1
            c.dropped_chars[reason] += n_chars

    def merge(self, other: FilterStats) -> FilterStats:
        """A new `FilterStats` with both counts added (order does not matter)."""
        out = FilterStats.from_dict(self.to_dict())
        for source, counts in other.sources.items():
            _add_counts(out.sources.setdefault(source, SourceCounts()), counts)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, sources and reasons sorted so equal stats give equal JSON."""
        return {
            source: {
                "docs_in": c.docs_in, "chars_in": c.chars_in, "docs_out": c.docs_out, "chars_out": c.chars_out,
                "dropped": dict(sorted(c.dropped.items())), "dropped_chars": dict(sorted(c.dropped_chars.items())),
            }
            for source, c in sorted(self.sources.items())
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> FilterStats:
        """Inverse of `to_dict`."""
        return cls({
            source: SourceCounts(
                d["docs_in"], d["chars_in"], d["docs_out"], d["chars_out"],
                Counter(d.get("dropped", {})), Counter(d.get("dropped_chars", {})),
            )
            for source, d in data.items()
        })

    def to_markdown(self) -> str:
        """The report table: one row per source (and a total), documents and characters, drops by reason."""
        reasons = [r for r in REASONS if any(c.dropped[r] for c in self.sources.values())]
        reasons += sorted({r for c in self.sources.values() for r in c.dropped} - set(reasons))
        rows = sorted(self.sources.items())
        if len(rows) > 1:
            rows.append(("**total**", self._total()))
        head = ["source", "docs in", "docs out", "kept %", "chars in", "chars out", *reasons]
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        for source, c in rows:
            kept = 100 * c.docs_out / c.docs_in if c.docs_in else 0.0
            cells = [source, f"{c.docs_in:,}", f"{c.docs_out:,}", f"{kept:.1f}", f"{c.chars_in:,}",
                     f"{c.chars_out:,}", *(f"{c.dropped[r]:,}" for r in reasons)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def _total(self) -> SourceCounts:
        total = SourceCounts()
        for counts in self.sources.values():
            _add_counts(total, counts)
        return total


def _add_counts(into: SourceCounts, other: SourceCounts) -> None:
    into.docs_in += other.docs_in
    into.chars_in += other.chars_in
    into.docs_out += other.docs_out
    into.chars_out += other.chars_out
    into.dropped.update(other.dropped)
    into.dropped_chars.update(other.dropped_chars)


def filter_documents(
    docs: Iterable[dict[str, Any]], cfg: FilterConfig, stats: FilterStats, text_key: str = "text",
    rules: tuple[Rule, ...] = RULES,
) -> Iterator[dict[str, Any]]:
    """The documents that pass `cfg`, counting every one in `stats` under its ``source``."""
    for doc in docs:
        text = doc[text_key]
        keep, reason = apply_filters(text, cfg, rules)
        stats.add(str(doc.get("source", "")), len(text), reason)
        if keep:
            yield doc
