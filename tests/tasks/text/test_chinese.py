"""zhwiki handling: LanguageConverter markup rules, Traditional -> Simplified, a whole page end to end."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

from kiln.errors import KilnError
from tasks.text import chinese
from tasks.text.chinese import simplify_page, strip_variant_markup, to_simplified
from tasks.text.pipeline import UnitSettings, read_unit
from tasks.text.units import discover_inputs, plan_units
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
        ("前-{zh-hans:abc; zh-hant:ABC", "前abc"),  # unclosed: the rest of the line is the body
        ("-{zh-hans:abc\n下一行", "abc\n下一行"),
        ("-{不转换", "不转换"),
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


def page(text: str, title: str = "軟體") -> tuple[str, str]:
    return simplify_page(text, title, clean_wikitext)


def test_hidden_rule_converts_later_words_of_the_page() -> None:
    # OpenCC alone makes 軟體 "软体"; the page's rule says 软件. Before the rule, as in
    # MediaWiki (it converts top to bottom), plain OpenCC still holds.
    text, title = page("軟體工程師。-{H|zh-hans:软件; zh-hant:軟體;}-他寫'''軟體'''。\n== 軟體 ==\n[[軟體]]很多。")
    assert text == "软体工程师。他写软件。\n\n软件\n软件很多。"
    assert title == "软件"  # the page's rules convert its title too
    assert page("他寫軟體。") == ("他写软体。", "软体")  # no rule: plain OpenCC, as before


def test_rule_maps_every_variant_to_the_simplified_form() -> None:
    text, _ = page("-{H|zh-cn:信息; zh-tw:資訊; zh-hk:資訊;}-資訊時代與資訊科技")
    assert text == "信息时代与信息科技"  # zh-cn stands in for zh-hans; OpenCC alone gives 资讯
    text, _ = page("-{H|zh-tw:資訊; zh-hk:資訊;}-資訊")
    assert text == "资讯"  # no Simplified form: the word is left to OpenCC


def test_shown_rule_shows_in_place_and_holds_after() -> None:
    text, _ = page("-{A|zh-hans:软件; zh-hant:軟體;}-很好，軟體也好。")
    assert text == "软件很好，软件也好。"


def test_rule_output_is_not_converted_again() -> None:
    # The surname 於 must stay 於; OpenCC alone turns it into 于. `-{H|乾}-` keeps 乾 as is.
    assert page("-{H|zh-hans:於; zh-hant:於;}-於梨華")[0] == "於梨华"
    assert page("-{H|乾}-乾燥")[0] == "乾燥"
    assert page("乾燥")[0] == "干燥"


def test_removed_rule_stops_holding() -> None:
    text, _ = page("-{H|zh-cn:信息; zh-tw:資訊;}-資訊，-{-|zh-cn:信息; zh-tw:資訊;}-資訊")
    assert text == "信息，资讯"


def test_noteta_rules_are_page_rules_and_its_groups_are_skipped() -> None:
    wikitext = """{{NoteTA
|G1=IT
|1=zh-hans:软件;zh-hant:軟體;
|2=zh-cn:信息;zh-tw:資訊;
|3=網路=>zh-cn:网络;
}}
'''軟體'''是[[資訊]]的一種，用於網路。{{Infobox|名稱=軟體}}
"""
    text, title = page(wikitext)
    assert text == "软件是信息的一种，用于网络。"  # OpenCC alone: 软体, 资讯, 网路
    assert title == "软件"
    assert page("{{noteTA|G1=IT}}網路")[0] == "网路"  # a group only: nothing we can apply


def test_rule_words_do_not_break_namespace_links() -> None:
    # 檔案 is both a word of the rule and zhwiki's File namespace: the link is still dropped.
    text, _ = page("-{H|zh-hans:文件; zh-hant:檔案;}-[[檔案:X.png|thumb|說明]]檔案很多。[[分類:資訊]]")
    assert text == "文件很多。"


def test_private_use_characters_in_the_page_survive() -> None:
    # Rule words are protected by tokens built on a private-use character the page lacks.
    text, _ = page("\ue000軟體-{H|zh-hans:软件; zh-hant:軟體;}-\ue000軟體\ue0010\ue001")
    assert text == "\ue000软体\ue000软件\ue0010\ue001"


def test_whole_page_with_simplify_page_matches_the_plain_path() -> None:
    # ZH_PAGE's one rule (信息/資訊) has no later word: the result is plain OpenCC's.
    assert page(ZH_PAGE)[0] == to_simplified(clean_wikitext(strip_variant_markup(ZH_PAGE)))


ZH_DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" xml:lang="zh">
<page><title>軟體</title><ns>0</ns><id>1</id><revision><id>10</id><text xml:space="preserve">\
{{NoteTA|G1=IT|1=zh-hans:软件;zh-hant:軟體;}}
'''軟體'''是-{A|zh-hans:计算机;zh-hant:電腦;}-上運行的程式。電腦與軟體。
</text></revision></page>
<page><title>電腦軟體</title><ns>0</ns><id>2</id><revision><id>20</id><text xml:space="preserve">\
'''電腦軟體'''是程式。-{zh-hans:abc
</text></revision></page>
</mediawiki>
"""


def test_rules_hold_for_their_page_only_in_the_clean_path(tmp_path: Path) -> None:
    dump = tmp_path / "zhwiki-20240101-pages-articles.xml"
    dump.write_text(ZH_DUMP, encoding="utf-8")
    (unit,) = plan_units(discover_inputs([dump], [], "en"), streams_per_unit=1)
    docs = list(read_unit(unit, UnitSettings(), Counter()))
    assert [(d["title"], d["text"]) for d in docs] == [
        ("软件", "软件是计算机上运行的程式。计算机与软件。"),
        ("电脑软体", "电脑软体是程式。abc"),  # the next page: plain OpenCC again
    ]
