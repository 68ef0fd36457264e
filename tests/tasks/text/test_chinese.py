"""zhwiki handling: LanguageConverter markup rules, Traditional -> Simplified, a whole page end to end."""

from __future__ import annotations

import sys

import pytest

from kiln.errors import KilnError
from tasks.text import chinese
from tasks.text.chinese import strip_variant_markup, to_simplified
from tasks.text.wikitext import clean_wikitext

ZH_PAGE = """{{Infobox software|name=維基百科}}
'''維基百科'''（{{lang-en|Wikipedia}}）是一個自由內容的[[網路百科全書]]，由[[維基媒體基金會]]運營。\
-{zh-hans:计算机; zh-hant:電腦;}-上可以閱讀。
它使用-{zh-cn:软件; zh-tw:軟體;}-[[MediaWiki]]。-{H|zh-hans:信息; zh-hant:資訊;}-
== 歷史 ==
-{T|zh-hans:维基百科; zh-hant:維基百科}-維基百科於2001年1月15日由[[吉米·威爾斯]]創立。<ref>{{cite web|title=歷史}}</ref>
[[File:Wikipedia-logo.png|thumb|標誌]]
[[Category:維基百科]]
"""


@pytest.mark.parametrize(
    ("markup", "shown"),
    [
        ("-{zh-hans:计算机; zh-hant:電腦;}-", "计算机"),
        ("-{zh-tw:電腦; zh-cn:计算机}-", "计算机"),  # zh-cn stands in for zh-hans
        ("-{zh-hant:電腦; zh-sg:电脑}-", "电脑"),
        ("-{zh-hant:電腦;}-", "電腦"),  # only a Traditional form: kept, to_simplified converts it
        ("-{不转换}-", "不转换"),
        ("-{R|原文}-", "原文"),
        ("前-{H|zh-hans:信息; zh-hant:資訊;}-后", "前后"),  # rule only, shows nothing
        ("-{A|zh-hans:信息; zh-hant:資訊;}-", "信息"),  # rule and shown
        ("-{T|zh-hans:标题; zh-hant:標題}-", ""),  # sets the title
        ("-{-|zh-hans:信息; zh-hant:資訊}-", ""),  # removes a rule
        ("-{zh-hans;zh-hk|只在简体显示}-", "只在简体显示"),
        ("-{zh-hant|只在繁體顯示}-", ""),
        ("外-{面-{内}-层}-", "外面内层"),  # nested markup resolves inside out
        ("-{ 電腦=>zh-hans:计算机; 電腦=>zh-hant:電腦 }-", "计算机"),  # unidirectional rule
        ("-{[[電腦|电脑]]}-", "[[電腦|电脑]]"),  # wraps a link: left for clean_wikitext
        ("a-{{lang|x}}-b {{foo}}-bar", "a-{{lang|x}}-b {{foo}}-bar"),  # templates next to "-": untouched
    ],
)
def test_variant_markup(markup: str, shown: str) -> None:
    assert strip_variant_markup(markup) == shown


def test_whole_page_comes_out_simplified_and_clean() -> None:
    text = to_simplified(clean_wikitext(strip_variant_markup(ZH_PAGE)))
    assert text == (
        "维基百科（Wikipedia）是一个自由内容的网路百科全书，由维基媒体基金会运营。计算机上可以阅读。\n"
        "它使用软件MediaWiki。\n\n"
        "历史\n"
        "维基百科于2001年1月15日由吉米·威尔斯创立。"
    )
    for gone in ("-{", "}-", "電腦", "資訊", "信息", "標誌", "[[", "{{"):
        assert gone not in text, gone


@pytest.mark.parametrize(
    ("traditional", "simplified"),
    [("頭髮", "头发"), ("乾燥", "干燥"), ("後面", "后面"), ("皇后", "皇后"), ("一隻", "一只"), ("臺灣", "台湾")],
)
def test_opencc_phrase_conversion(traditional: str, simplified: str) -> None:
    # The opencc wheel ships dictionaries but no test data files, so these pairs are ours:
    # each needs phrase- or context-level choices (髮/發 -> 发, 乾 -> 干 but 后 stays 后).
    assert to_simplified(traditional) == simplified


def test_missing_opencc_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    chinese._converter.cache_clear()
    monkeypatch.setitem(sys.modules, "opencc", None)  # makes `import opencc` fail
    try:
        with pytest.raises(KilnError, match=r"pip install 'kiln\[zh\]'"):
            to_simplified("維基")
    finally:
        chinese._converter.cache_clear()
