"""Quality filters: one tiny document per drop reason, rules as steps, stats and report, real Wikipedia passing.

Each inline document breaks exactly one rule: it is dropped for that reason with the
defaults and kept once that one check is turned off; run alone, its rule drops it and keeps
ordinary prose. A rule defined here, outside the module, plugs in beside the built-in ones.
"""

from __future__ import annotations

import bz2
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path

import pytest

from kiln.errors import KilnError
from tasks.text.features import TextFeatures
from tasks.text.filters import (
    REASONS,
    RULES,
    FilterConfig,
    FilterStats,
    Rule,
    apply_filters,
    filter_documents,
    language_share,
    rule,
)

PROSE = (
    "The river valley was settled by farmers who grew barley and raised goats on the terraced slopes. "
    "Over several centuries the villages traded wool, salt and pottery with merchants from the coast, "
    "and a small market town grew around the old stone bridge. Historians still argue about when the "
    "first fortified walls were built, because the surviving records are fragmentary and often "
    "contradict one another. Today the region is known for its orchards, its quiet monasteries and a "
    "narrow railway that climbs toward the northern pass."
)
ZH = (
    "长江是亚洲第一长河，全长约六千三百公里，发源于青藏高原的唐古拉山脉，自西向东流经青海、西藏、四川、"
    "云南、重庆、湖北、湖南、江西、安徽、江苏和上海，最后注入东海。长江流域气候温暖湿润，物产丰富，"
    "自古以来就是中国重要的农业区。沿岸分布着许多历史名城，例如重庆、武汉和南京。三峡工程是世界上规模"
    "最大的水利枢纽之一，兼有防洪、发电和航运等功能。近年来，政府加强了对流域生态环境的保护，"
    "禁止在部分江段捕鱼，以恢复珍稀鱼类的种群数量。"
)
LONG_WORDS = ("Supercalifragilistic Antidisestablishment Floccinaucinihilipilification Pneumonoultramicroscopic "
              "Hippopotomonstrosesquipedalian Incomprehensibilities Uncharacteristically Counterrevolutionaries "
              "Electroencephalographically Immunoelectrophoretically Psychophysicotherapeutics Thyroparathyroidectomy")
SENTENCES = PROSE.split(". ")
DEFAULT = FilterConfig()

# (reason, text, config, the change that turns just that check off)
CASES: list[tuple[str, str, FilterConfig, dict]] = [
    ("too_short", "A short note about a river.", DEFAULT, {"min_chars": None, "min_words": None}),
    ("too_few_words", LONG_WORDS, DEFAULT, {"min_words": None}),
    ("too_long", PROSE, replace(DEFAULT, max_chars=500), {"max_chars": None}),
    ("symbol_ratio", PROSE + " " + " ".join(f"#tag{c}" for c in "abcdefghijkl"), DEFAULT, {"max_symbol_ratio": None}),
    ("non_alpha_ratio", PROSE + "\n" + " ".join(f"{1900 + i}: {i * 37.5:.1f} / {i * 1234:,}" for i in range(40)),
     DEFAULT, {"max_non_alpha_ratio": None}),
    ("language_share", PROSE, replace(DEFAULT, languages=("zh",)), {"languages": ()}),
    ("language_share", ZH, replace(DEFAULT, languages=("en", "ru")), {"languages": ()}),
    ("bullet_lines", "\n".join(f"• {part.strip()}" for part in PROSE.split(",")), DEFAULT,
     {"max_bullet_start_ratio": None}),
    ("ellipsis_lines", "\n".join(s + ("..." if i % 2 else ".") for i, s in enumerate(SENTENCES)), DEFAULT,
     {"max_ellipsis_end_ratio": None}),
    ("duplicate_lines", "\n".join(SENTENCES + ["Read more"] * 4), DEFAULT,
     {"max_duplicate_line_fraction": None, "max_duplicate_line_char_fraction": None}),
    ("top_ngram_repetition", PROSE + " buy cheap watches online" * 15, DEFAULT,
     {"max_top_2gram_fraction": None, "max_top_3gram_fraction": None, "max_top_4gram_fraction": None}),
]


@pytest.mark.parametrize(("reason", "text", "cfg", "off"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_document_is_dropped_for_exactly_its_reason(reason: str, text: str, cfg: FilterConfig, off: dict) -> None:
    assert reason in REASONS
    assert apply_filters(text, cfg) == (False, reason)
    assert apply_filters(text, replace(cfg, **off)) == (True, None)


def test_every_reason_has_a_case() -> None:
    assert {c[0] for c in CASES} == set(REASONS)


RULE_BY_REASON = {r.reason: r for r in RULES}


@pytest.mark.parametrize(("reason", "text", "cfg", "off"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_rule_alone_drops_its_document_and_keeps_prose(reason: str, text: str, cfg: FilterConfig, off) -> None:
    alone = (RULE_BY_REASON[reason],)
    good = ZH if cfg.languages == ("zh",) or cfg.max_chars == 500 else PROSE  # ZH: Chinese, 211 characters
    assert apply_filters(text, cfg, alone) == (False, reason)
    assert apply_filters(good, cfg, alone) == (True, None)
    assert RULE_BY_REASON[reason].breaks(TextFeatures(text), cfg)


def test_rules_are_the_registry_of_reasons_and_thresholds() -> None:
    assert tuple(r.reason for r in RULES) == REASONS and len(set(REASONS)) == len(REASONS)
    names = {f.name for f in fields(FilterConfig)}
    switched = {t for r in RULES for t in r.thresholds}
    assert switched <= names
    assert {n for n in names if n.startswith(("max_", "min_")) and n != "min_language_share"} <= switched
    assert [r for r in RULES if r.is_on(FilterConfig.disabled())] == []
    for r in RULES:  # each rule's own thresholds switch just that rule on
        on = FilterConfig.disabled(**{t: getattr(DEFAULT, t) or ("en",) for t in r.thresholds})
        assert [q.reason for q in RULES if q.is_on(on)] == [r.reason]


def test_a_rule_defined_outside_the_module_runs_after_the_built_in_ones() -> None:
    @rule("shouting")  # no config field: always on; its limit lives here
    def shouting(doc: TextFeatures, cfg: FilterConfig) -> bool:
        upper = sum(map(str.isupper, doc.text))
        return doc.letters > 0 and upper / doc.letters > 0.5

    assert isinstance(shouting, Rule) and shouting.thresholds == ()
    rules = (*RULES, shouting)
    assert apply_filters(PROSE.upper(), DEFAULT, rules) == (False, "shouting")
    assert apply_filters(PROSE.upper(), DEFAULT) == (True, None)  # the built-in registry is untouched
    assert apply_filters(PROSE, DEFAULT, rules) == (True, None)
    assert apply_filters("SHORT AND LOUD", DEFAULT, rules) == (False, "too_short")  # first rule broken wins
    stats = FilterStats()
    assert list(filter_documents([{"source": "x", "text": PROSE.upper()}], DEFAULT, stats, rules=rules)) == []
    assert stats.sources["x"].dropped == Counter({"shouting": 1})


def test_default_length_limit() -> None:
    assert apply_filters("word " * 1_000_001, DEFAULT) == (False, "too_long")  # 5 M characters


def test_normal_english_and_chinese_prose_pass() -> None:
    assert apply_filters(PROSE, replace(DEFAULT, languages=("en",))) == (True, None)
    assert apply_filters(ZH, replace(DEFAULT, languages=("zh",))) == (True, None)  # 211 characters = 211 "words"


def _reference_top_ngram_fraction(text: str, n: int) -> float:
    """Gopher's top n-gram character fraction the slow, obvious way (ties: the longest n-gram)."""
    words = text.split()
    grams = Counter(zip(*(words[i:] for i in range(n)), strict=False))
    top = max(grams.values())
    return 0.0 if top < 2 else top * max(sum(map(len, g)) for g, c in grams.items() if c == top) / len("".join(words))


@pytest.mark.parametrize("text", [
    PROSE + " Supercalifragilisticexpialidocious umbrella" * 4,  # repeats less often than "the", yet covers more
    PROSE + " buy cheap watches online" * 15,
    PROSE + " the the the the the",
    PROSE,
])
def test_top_ngram_check_matches_the_reference(text: str) -> None:
    limits = {2: 0.20, 3: 0.18, 4: 0.16}
    expected = any(_reference_top_ngram_fraction(text, n) > lim for n, lim in limits.items())
    cfg = FilterConfig.disabled(max_top_2gram_fraction=0.20, max_top_3gram_fraction=0.18, max_top_4gram_fraction=0.16)
    assert apply_filters(text, cfg) == ((False, "top_ngram_repetition") if expected else (True, None))


def test_checks_single_out_with_disabled_config() -> None:
    garbage = "# ... " * 3
    assert apply_filters(garbage, FilterConfig.disabled()) == (True, None)
    assert apply_filters(garbage, FilterConfig.disabled(max_symbol_ratio=0.5)) == (False, "symbol_ratio")
    assert apply_filters("", FilterConfig.disabled()) == (True, None)


def test_language_share_is_script_based() -> None:
    assert language_share(ZH, ["zh"]) == 1.0
    assert language_share(PROSE, ["en"]) == 1.0
    assert language_share("Привет мир hello", ["ru"]) == pytest.approx(9 / 14)
    assert language_share("日本語のテキスト", ["ja"]) == 1.0 and language_share("日本語のテキスト", ["zh"]) == 0.375
    assert language_share("1234 !!", ["en"]) == 0.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_symbol_ratio": 1.5}, r"filters\.max_symbol_ratio is a fraction"),
    ({"min_words": -1}, r"filters\.min_words must be >= 0"),
    ({"min_chars": 10, "max_chars": 5}, r"filters\.min_chars 10 > filters\.max_chars 5"),
    ({"languages": ("en", "klingon")}, r"filters\.languages: unknown \['klingon'\]"),
    ({"keep_dropped": -1}, r"filters\.keep_dropped must be >= 0"),
])
def test_config_errors_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises(KilnError, match=message):
        FilterConfig(**kwargs)


# ---------------------------------------------------------------- stats and report


def test_filter_documents_counts_every_document() -> None:
    docs = [{"source": "wudao", "text": ZH}, {"source": "pile", "text": PROSE}, {"source": "pile", "text": "tiny"}]
    stats = FilterStats()
    kept = list(filter_documents(docs, DEFAULT, stats))
    assert kept == docs[:2]
    assert stats.to_dict() == {
        "pile": {"docs_in": 2, "chars_in": len(PROSE) + 4, "docs_out": 1, "chars_out": len(PROSE),
                 "dropped": {"too_short": 1}, "dropped_chars": {"too_short": 4}},
        "wudao": {"docs_in": 1, "chars_in": len(ZH), "docs_out": 1, "chars_out": len(ZH),
                  "dropped": {}, "dropped_chars": {}},
    }


def test_stats_merge_is_order_free_and_round_trips_through_json() -> None:
    a, b = FilterStats(), FilterStats()
    a.add("wiki-en", 100, None)
    a.add("wiki-en", 10, "too_short")
    b.add("wiki-en", 20, "too_short")
    b.add("pile", 5000, "duplicate_lines")
    merged = a.merge(b)
    assert merged.to_dict() == b.merge(a).to_dict()
    assert merged.sources["wiki-en"].dropped["too_short"] == 2 and merged.sources["wiki-en"].docs_in == 3
    assert a.sources["wiki-en"].docs_in == 2  # merge returns a new object
    assert FilterStats.from_dict(json.loads(json.dumps(merged.to_dict()))).to_dict() == merged.to_dict()


def test_report_markdown_table() -> None:
    stats = FilterStats()
    for _ in range(3):
        stats.add("wiki-en", 1000, None)
    stats.add("wiki-en", 50, "too_short")
    stats.add("pile", 2000, "top_ngram_repetition")
    assert stats.to_markdown() == "\n".join([
        "| source | docs in | docs out | kept % | chars in | chars out | too_short | top_ngram_repetition |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        "| pile | 1 | 0 | 0.0 | 2,000 | 0 | 0 | 1 |",
        "| wiki-en | 4 | 3 | 75.0 | 3,050 | 3,000 | 1 | 0 |",
        "| **total** | 5 | 3 | 60.0 | 5,050 | 3,000 | 1 | 1 |",
    ])


# ---------------------------------------------------------------- real Wikipedia


def wiki_pages(path: Path) -> list[dict[str, str]]:
    """All pages of a MediaWiki dump (title, ns, redirect flag, wikitext), read with ElementTree."""
    pages = []
    with bz2.open(path) as f:
        for _, el in ET.iterparse(f):
            if el.tag.rsplit("}", 1)[-1] == "page":
                pages.append({"title": el.findtext("{*}title") or "", "ns": el.findtext("{*}ns") or "",
                              "redirect": "yes" if el.find("{*}redirect") is not None else "",
                              "text": el.findtext("{*}revision/{*}text") or ""})
                el.clear()
    return pages


def plain_text_cleaner() -> Callable[[str], str]:
    """`clean_wikitext` when that module is there; else a crude regex markup strip."""
    try:
        from tasks.text.wikitext import clean_wikitext
    except ImportError:
        return _regex_strip
    return clean_wikitext


def _regex_strip(text: str) -> str:
    for _ in range(3):  # nested templates, innermost first
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
    text = re.sub(r"\{\|.*?\|\}", "", text, flags=re.S)
    text = re.sub(r"<ref[^>]*/>|<ref.*?</ref>|<!--.*?-->|<[^>]+>", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
    return re.sub(r"'{2,}|={2,}", "", text)


def test_defaults_keep_real_wikipedia_articles(enwiki_sample: Path) -> None:
    clean = plain_text_cleaner()
    articles = [p for p in wiki_pages(enwiki_sample) if p["ns"] == "0" and not p["redirect"]]
    assert len(articles) >= 100
    stats = FilterStats()
    docs = [{"source": "wiki-en", "text": clean(p["text"])} for p in articles]
    kept = list(filter_documents(docs, replace(DEFAULT, languages=("en",)), stats))
    assert len(kept) >= 0.95 * len(articles), stats.to_markdown()
