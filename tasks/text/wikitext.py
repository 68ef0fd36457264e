"""Wiki markup -> clean plain text for LM training, fast: ~9x naive mwparserfromhell, ~2.5x WikiExtractor.

`clean_wikitext(text, options)` runs in two passes:

1. A linear pre-pass of compiled regexes drops the bulky constructs that carry no prose:
   comments, `<ref>`/`<gallery>`/`<timeline>`... blocks, templates (innermost first, so
   nesting costs one pass per level), tables, File/Category/interlanguage links, quote
   markup and behaviour switches, and resolves plain `[[Title|label]]` links. On the
   gensim enwiki sample this cuts the text by half and the parser's work by ~85%.
2. mwparserfromhell's tokenizer (its C extension) reads the remainder and a flat walk over
   its tokens renders what is left: headings, HTML tags, entities, external links, and
   links with anything nested in them. We skip mwparserfromhell's tree builder on purpose:
   building `Wikicode` costs ~8x the tokenizer itself, and `strip_code()` keeps table
   cells (`|` residue ~0.7 per 1000 characters on enwiki, ours ~0.001).
   `benchmarks/clean_throughput.py` measures all of this side by side.

Decisions worth knowing:
- Templates are dropped (we have no template definitions), except a few inline ones
  whose text belongs to the sentence: `lang`, `lang-xx`, `nowrap`, `convert`, dashes...
- Tables (`{| |}` and `<table>`) are dropped: cell text is mostly numbers and names.
- `<math>`/`<chem>` are dropped by default (TeX is not prose; `keep_math` keeps it);
  `<pre>`, `<syntaxhighlight>`, `<source>`, `<code>` keep their text (code is useful data).
- Image captions go with their File: link, as in MediaWiki's own plain-text extracts.
- Unbalanced markup is stripped rather than shown (`[[`, `{{` never reach the output).
- Output: one line per paragraph, list item or heading; blocks separated by a blank line
  in the source stay separated by one blank line; empty sections lose their heading.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from mwparserfromhell.parser import tokens as tk
from mwparserfromhell.parser import use_c

if use_c:
    from mwparserfromhell.parser._tokenizer import CTokenizer as _Tokenizer
else:  # pure-Python fallback, ~10x slower, still correct
    from mwparserfromhell.parser.tokenizer import Tokenizer as _Tokenizer


def _words(text: str) -> frozenset[str]:
    return frozenset(text.replace("_", " ").split() if "|" not in text else text.split("|"))


# Localized File/Image/Media and Category namespace names of the larger wikis (lowercase,
# "_" for a space); a dump's own names can be added through WikitextOptions.
FILE_NAMESPACES = _words(
    "file image media файл картинка изображение медия медиа 文件 檔案 档案 图像 圖像 媒体 媒體 图片 圖片"
    " datei bild medium fichier archivo imagen ficheiro arquivo imagem immagine plik grafika bestand"
    " afbeelding ファイル 画像 파일 그림 dosya resim soubor obrázek súbor fájl kép fișier imagine αρχείο"
    " εικόνα berkas gambar tiedosto kuva fil billede slika датотека зображення tập_tin hình קובץ תמונה"
    " ملف صورة پرونده تصویر"
)
CATEGORY_NAMESPACES = _words(
    "category категория 分类 分類 kategorie catégorie categoría categoria kategoria categorie カテゴリ"
    " 분류 kategori kategória κατηγορία luokka kategorija категорија категорія thể_loại קטגוריה تصنيف رده"
)
# Short interwiki prefixes that are not languages: `[[wikt:word]]` stays inline text.
INTERWIKI_NOT_LANGUAGE = _words("w wikt s q n b v c d m mw voy wmf meta species commons wikipedia")


@dataclass(frozen=True)
class WikitextOptions:
    """How `clean_wikitext` renders a page."""

    keep_headings: bool = True
    """Section headings `== H ==` become a plain line "H"; False drops them."""
    keep_lists: bool = True
    """List items (`*`, `#`) become plain lines; False drops them (often link lists)."""
    min_paragraph_chars: int = 0
    """Drop output lines (headings excepted) shorter than this many characters."""
    keep_math: bool = False
    """Keep the raw TeX inside `<math>`/`<chem>`; the default drops it."""
    keep_empty_sections: bool = False
    """Keep headings whose section is empty after cleaning ("References", "Notes")."""
    extra_file_namespaces: tuple[str, ...] = ()
    """More localized File/Image namespace names (e.g. from the dump's siteinfo)."""
    extra_category_namespaces: tuple[str, ...] = ()
    """More localized Category namespace names."""

    def __post_init__(self) -> None:
        if self.min_paragraph_chars < 0:
            raise ValueError(f"min_paragraph_chars must be >= 0, got {self.min_paragraph_chars}")


# ---------------------------------------------------------------- pre-pass regexes
_COMMENT_RE = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
# Tags whose whole body goes; and tags whose body is opaque (MediaWiki does not expand
# braces/links inside them), which we keep but mask so later passes cannot misread them.
_DROP_TAGS = (
    "ref|references|gallery|timeline|score|graph|imagemap|templatedata|mapframe|maplink"
    "|hiero|inputbox|categorytree|indicator|noinclude|includeonly|templatestyles|section"
    "|chart|charinsert|poll|phonos"
)
_MATH_TAGS = "math|chem|ce"
_OPAQUE_TAGS = "nowiki|pre|syntaxhighlight|source"
# Case-insensitive only around the names: a global re.I hides the literal "<" prefix
# from `re`'s fast search and costs ~2x.
_BLOCK_TAG_RE = re.compile(
    rf"<(?P<tag>(?i:{_DROP_TAGS}|{_MATH_TAGS}|{_OPAQUE_TAGS}))(?:\s[^>]*?)?"
    r"(?:/>|>(?P<body>.*?)</(?i:(?P=tag))\s*>)",
    re.S,
)
_REF_RE = re.compile(r"<ref(?:\s[^>]*?)?(?:/>|>.*?</ref\s*>)", re.S)
_DROP_SET = _words(_DROP_TAGS)
_MATH_SET = _words(_MATH_TAGS)
# Characters that would otherwise be read as markup; the tokenizer walk decodes them back.
_MASK = str.maketrans({c: f"&#{ord(c)};" for c in "[]{}|<>'&=*#:;"})

# An innermost template: `{{` ... `}}` with no `{{`/`}}` inside (single braces are fine).
# Possessive quantifiers keep a failed match linear (an unclosed `{{` costs one scan).
_TEMPLATE_RE = re.compile(r"\{\{(?:[^{}]++|\{(?!\{)|\}(?!\}))*+\}\}")
# Table delimiters; they count only at line start, which Python checks (a `^` anchor
# here makes the scan ~3x slower). `|}}` closes a template, not a table.
_TABLE_RE = re.compile(r"\{\||\|\}(?!\})")
_LINK_PREFIX_RE = re.compile(r"\[\[[ \t]*([^\[\]|:\n]{1,40}?)[ \t]*:")
_BRACKETS_RE = re.compile(r"\[\[|\]\]|\n")
_LANG_CODE_RE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8}){0,2}|simple")
# `[[Title]]` / `[[Title|label]]` with nothing nested inside: most links on a page.
# A title with ":" may be File:/Category:/de: and is left to `_drop_special_links`.
_SIMPLE_LINK_RE = re.compile(r"\[\[([^\[\]|\n<>{}&:]+)(?:\|([^\[\]\n<>{}]*))?\]\]")
# HTML tags MediaWiki allows in wikitext. Any other `<` is literal text ("<10 ppm"), and
# we escape it: mwparserfromhell tries to read a tag there and rescans the rest of the
# page (22 ms instead of 1 ms for "Asphalt").
_HTML_TAGS = (
    "b|i|u|s|em|strong|small|big|sub|sup|span|div|p|br|hr|center|blockquote|poem|code|tt"
    "|kbd|var|samp|abbr|cite|q|dfn|del|ins|mark|font|ruby|rb|rt|rp|rtc|li|ul|ol|dl|dd|dt"
    "|h[1-6]|table|tr|td|th|caption|wbr|bdi|bdo|time|data|strike|nowiki|pre|ref|references"
    "|syntaxhighlight|source|math|chem|ce|gallery|timeline|score|graph|imagemap"
    "|templatedata|mapframe|maplink|hiero|inputbox|categorytree|indicator|noinclude"
    "|includeonly|onlyinclude|templatestyles|section|chart|charinsert|poll|phonos"
)
_LITERAL_LT_RE = re.compile(rf"<(?!/?(?i:{_HTML_TAGS})[\s/>])")
_SWITCH_RE = re.compile(r"__[^\W\d_a-z]{3,}__")
# Patterns start with a literal ("''", "\n") so `re` can jump between candidates;
# `^` with re.M is ~10x slower on this input. The pre-pass adds a leading "\n" for them.
# Longest first: `''''` leaves an apostrophe before bold text, as MediaWiki renders it.
_QUOTES_RE = re.compile(r"'''''|'''|''")
_LIST_MARK_RE = re.compile(r"\n[*#:;]+[ \t]*")
_LIST_LINE_RE = re.compile(r"\n[*#][^\n]*")
_HR_RE = re.compile(r"\n-{4,}")

# ---------------------------------------------------------------- post-pass regexes
_ORPHAN_RE = re.compile(r"\[\[|\]\]|\{\{|\}\}|\{\||</?(?i:ref)\b[^>]*>")
_EMPTY_PARENS_RE = re.compile(r"\( ?(?:[,;:\u2013-] ?)*\)")
_PAREN_LEAD_RE = re.compile(r"\( ?(?:[,;] ?)+")
_SPACE_DOT_RE = re.compile(r" \.(?=\s|$)")
_MULTI_SPACE_RE = re.compile(r"  +")
_ODD_SPACES = "\t\u00a0\u2007\u2009\u200a\u202f\u3000\r\f\v"
# Punctuation left dangling where a template stood, e.g. "Anarchism ( ; from ...)".
_PUNCT_FIXES = ((" )", ")"), (",)", ")"), (";)", ")"), ("( ", "("), (" ,", ","))
_HAS_WORD_RE = re.compile(r"\w")

# ---------------------------------------------------------------- walk: tag classes
_BLOCK_TAGS = _words(
    "p div blockquote center poem pre li ul ol dl dd dt h1 h2 h3 h4 h5 h6 br hr syntaxhighlight source caption"
)
_WALK_DROP_TAGS = _DROP_SET | _MATH_SET | _words("table style script")
_TABLE_MARKUP = frozenset(("{|", "|", "||", "!", "!!", "|+", "|-"))
_HEADING = "\x01"  # marks a heading line between the walk and the post-pass


def clean_wikitext(text: str, options: WikitextOptions = WikitextOptions()) -> str:
    """Render one page's wikitext as plain text (see the module docstring)."""
    text = _prepass(text, options)
    if not text.strip():
        return ""
    rendered = _walk(_Tokenizer().tokenize(text, 0, True), options.keep_headings)
    return _finish(rendered, options)


def markup_residue(text: str) -> dict[str, float]:
    """Occurrences of leftover-markup patterns per 1000 characters of `text`."""
    scale = 1000.0 / max(len(text), 1)
    patterns = ("{{", "}}", "[[", "]]", "{|", "|", "<ref", "&nbsp;", "'''")
    return {p: text.count(p) * scale for p in patterns}


# ---------------------------------------------------------------- pre-pass
def _prepass(text: str, options: WikitextOptions) -> str:
    if _HEADING in text:  # our heading marker must not come from the input
        text = text.replace(_HEADING, "")
    if "<!--" in text:
        text = _COMMENT_RE.sub("", text)
    if "<ref" in text:
        text = _REF_RE.sub("", text)  # most tags are refs: no Python callback for them
    if "<" in text:
        keep_math = options.keep_math
        text = _BLOCK_TAG_RE.sub(lambda m: _block_tag(m, keep_math), text)
    if "{" in text:
        text = _drop_templates(text)
        if "{|" in text:
            text = _drop_tables(text)
    if "[[" in text:
        # Plain links are resolved here, the rest go to mwparserfromhell's tokenizer: it
        # spends ~4 us building tokens per link, 25% of the whole clean on enwiki.
        text = _SIMPLE_LINK_RE.sub(_simple_link, text)
        if "[[" in text:
            text = _drop_special_links(text, _namespaces(options))
    if "<" in text:
        text = _LITERAL_LT_RE.sub("&lt;", text)
    if "__" in text:
        text = _SWITCH_RE.sub("", text)
    if "''" in text:
        text = _QUOTES_RE.sub("", text)
    text = "\n" + text
    if "----" in text:
        text = _HR_RE.sub("\n", text)
    if not options.keep_lists:
        text = _LIST_LINE_RE.sub("\n", text)
    return _LIST_MARK_RE.sub("\n", text)


def _block_tag(m: re.Match[str], keep_math: bool) -> str:
    tag = m.group("tag").lower()
    body = m.group("body")
    if tag in _DROP_SET or body is None or (tag in _MATH_SET and not keep_math):
        return ""
    masked = body.translate(_MASK)
    # Blocks of code/preformatted text stand on their own lines; nowiki/math are inline.
    return f"\n{masked}\n" if tag in ("pre", "syntaxhighlight", "source") else masked


def _simple_link(m: re.Match[str]) -> str:
    label = m.group(2)
    if label is None:
        return m.group(1)
    return label or _pipe_trick(m.group(1))  # `[[Foo (bar)|]]` shows "Foo"


def _drop_templates(text: str) -> str:
    """Replace `{{templates}}` innermost first: each by its inline text (mostly "")."""
    count = 1
    while count:  # one pass per nesting level
        text, count = _TEMPLATE_RE.subn(_template, text)
    return text


def _template(m: re.Match[str]) -> str:
    return render_template(m.group()[2:-2])


def _drop_tables(text: str) -> str:
    """Remove `{| ... |}` tables (nested ones included); an unclosed one runs to the end."""
    opens: list[int] = []
    spans: list[tuple[int, int]] = []
    for m in _TABLE_RE.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        indent = text[line_start : m.start()]
        if m.group() == "{|" and not indent.strip(" \t:"):  # `:{|` is an indented table
            opens.append(m.start())
        elif m.group() == "|}" and not indent.strip(" \t") and opens:
            start = opens.pop()
            if not opens:
                spans.append((start, m.end()))
    if opens:
        spans.append((opens[0], len(text)))  # as MediaWiki renders an unclosed table
    parts, pos = [], 0
    for start, end in spans:
        parts.append(text[pos:start])
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


# Inline templates whose output is part of the sentence. Everything else is dropped.
_FIXED_TEMPLATES = {
    "ndash": "\u2013", "mdash": "\u2014", "snd": " \u2013 ", "spnd": " \u2013 ",
    "spaced ndash": " \u2013 ", "nbsp": " ", "'": "'", "=": "=", "middot": " \u00b7 ",
    "dot": " \u00b7 ", "\u00b7": " \u00b7 ", "en dash": "\u2013", "em dash": "\u2014",
}  # fmt: skip
_RANGE_WORDS = {"-": "\u2013", "\u2013": "\u2013", "to": " to ", "and": " and ", "or": " or "}


def _convert(args: list[str]) -> str:
    if len(args) >= 4 and args[1] in _RANGE_WORDS:  # {{convert|5|-|10|km}} -> "5–10 km"
        return f"{args[0]}{_RANGE_WORDS[args[1]]}{args[2]} {args[3]}"
    return f"{args[0]} {args[1]}" if len(args) >= 2 else args[0]


def _frac(args: list[str]) -> str:
    return {1: "1/{0}", 2: "{0}/{1}"}.get(len(args), "{0} {1}/{2}").format(*args)


def _last_of_two(args: list[str]) -> str:  # {{lang|fr|texte}}, {{transl|ar|...|text}}
    return args[-1] if len(args) > 1 else ""


_ARG_TEMPLATES: dict[str, Callable[[list[str]], str]] = {
    **dict.fromkeys(
        _words(
            "nowrap|nobr|small|smaller|big|larger|em|strong|abbr|sup|sub|math|mvar|nihongo|sic"
            "|visible anchor|not a typo|proper name|linktext"
        ),
        lambda a: a[0],
    ),
    **dict.fromkeys(("quote", "blockquote", "quotation", "cquote"), lambda a: f"\n{a[0]}\n"),
    **dict.fromkeys(("lang", "transl", "transliteration"), _last_of_two),
    **dict.fromkeys(("convert", "cvt"), _convert),
    **dict.fromkeys(("frac", "sfrac"), _frac),
    **dict.fromkeys(("circa", "c."), lambda a: f"c. {a[0]}"),
    "as of": lambda a: f"As of {a[0]}",
}
_LINK_PIPES_RE = re.compile(r"\[\[[^\[\]]*\]\]")
_NAMED_ARG_RE = re.compile(r"\s*([^=\[\]{}]+?)\s*=(.*)", re.S)


def render_template(body: str) -> str:
    """The text an inline template such as `{{lang|fr|texte}}` shows; "" for all others."""
    name, _, rest = body.partition("|")
    key = name.strip().lower().replace("_", " ")
    fixed = _FIXED_TEMPLATES.get(key)
    if fixed is not None:
        return fixed
    handler = _ARG_TEMPLATES["nowrap"] if key.startswith("lang-") else _ARG_TEMPLATES.get(key)
    if handler is None or not rest:
        return ""
    args = _positional_args(rest)
    return handler(args) if args else ""


def _positional_args(rest: str) -> list[str]:
    # A `|` inside a [[link|label]] does not separate template arguments.
    if "[[" in rest:
        rest = _LINK_PIPES_RE.sub(lambda m: m.group().replace("|", "\x00"), rest)
    positional: dict[int, str] = {}
    unnamed = 0
    for part in rest.split("|"):
        part = part.replace("\x00", "|")
        named = _NAMED_ARG_RE.match(part)
        if named is None:
            positional[unnamed] = part.strip()
            unnamed += 1
        elif named.group(1).isdigit():  # `1=a = b`: explicit number, value may hold "="
            positional[int(named.group(1)) - 1] = named.group(2).strip()
        elif named.group(1) in ("text", "quote"):  # {{quote|text=...}}
            positional.setdefault(0, named.group(2).strip())
    return [positional[k] for k in sorted(positional)]


@lru_cache(maxsize=64)
def _namespaces(options: WikitextOptions) -> tuple[frozenset[str], frozenset[str]]:
    files = FILE_NAMESPACES | {n.lower() for n in options.extra_file_namespaces}
    cats = CATEGORY_NAMESPACES | {n.lower() for n in options.extra_category_namespaces}
    return files, cats


def _drop_special_links(text: str, namespaces: tuple[frozenset[str], frozenset[str]]) -> str:
    """Remove File/Image/Category links (captions included) and interlanguage links."""
    files, cats = namespaces
    parts: list[str] = []
    pos = 0
    for m in _LINK_PREFIX_RE.finditer(text):
        if m.start() < pos:
            continue  # inside a link we already removed
        prefix = m.group(1).lower()
        is_lang = prefix not in INTERWIKI_NOT_LANGUAGE and _LANG_CODE_RE.fullmatch(prefix)
        if not (is_lang or prefix in files or prefix in cats):
            continue
        end = _link_end(text, m.end())
        if is_lang and "|" in text[m.end() : end]:
            continue  # `[[de:Haus|Haus]]` is an inline interwiki link: keep its label
        parts.append(text[pos : m.start()])
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def _link_end(text: str, pos: int) -> int:
    """End of the `[[...]]` whose body starts at `pos`, allowing nested links in captions."""
    depth = 1
    for m in _BRACKETS_RE.finditer(text, pos):
        tok = m.group()
        if tok == "\n" and depth == 1 and text.startswith("\n\n", m.start()):
            return m.start()  # unclosed: a paragraph break ends it
        if tok == "[[":
            depth += 1
        elif tok == "]]":
            depth -= 1
            if depth == 0:
                return m.end()
    return len(text)


# ---------------------------------------------------------------- token walk
def _walk(tokens: list, keep_headings: bool) -> str:
    """Render tokenizer output as text: links -> their label, tags -> their inner text."""
    out: list[str] = []
    emit = out.append
    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        cls = type(tok)
        if cls is tk.Text:
            emit(tok["text"])
        elif cls is tk.WikilinkOpen:
            # Fast paths for the two shapes that make up nearly all links.
            a, b = tokens[i + 1 : i + 3] if i + 3 <= n else (None, None)
            if type(a) is tk.Text and type(b) is tk.WikilinkClose:
                emit(a["text"].lstrip(": "))  # `[[:Category:X]]` shows "Category:X"
                i += 3
            elif type(a) is tk.Text and type(b) is tk.WikilinkSeparator:
                i += 3  # `[[A|label]]`: the label renders here, WikilinkClose emits nothing
                if i < n and type(tokens[i]) is tk.WikilinkClose:
                    emit(_pipe_trick(a["text"]))  # `[[Foo (bar)|]]` shows "Foo"
                    i += 1
            else:
                i = _wikilink(tokens, i + 1, emit)
            continue
        elif cls is tk.ExternalLinkOpen:
            i = _external_link(tokens, i + 1, tok["brackets"], emit)
            continue
        elif cls is tk.TagOpenOpen:
            i = _tag_open(tokens, i, emit)
            continue
        elif cls is tk.TagOpenClose:
            name = tokens[i + 1] if i + 1 < n else None
            if type(name) is tk.Text and name["text"].strip().lower() in _BLOCK_TAGS:
                emit("\n")
            i = _skip_to(tokens, i + 1, tk.TagCloseClose) + 1
            continue
        elif cls is tk.HTMLEntityStart:
            i = _entity(tokens, i + 1, emit)
            continue
        elif cls is tk.HeadingStart:
            if keep_headings:
                emit(f"\n{_HEADING}{tok['level']}")
            else:
                i = _skip_to(tokens, i + 1, tk.HeadingEnd)
                emit("\n")
        elif cls is tk.HeadingEnd:
            emit("\n")
        elif cls in _SKIP_PAIRS:
            i = _skip_balanced(tokens, i, cls, _SKIP_PAIRS[cls])
        i += 1
    return "".join(out)


# Constructs the pre-pass should already have removed; skipped whole if any survive.
_SKIP_PAIRS = {
    tk.TemplateOpen: tk.TemplateClose,
    tk.ArgumentOpen: tk.ArgumentClose,
    tk.CommentStart: tk.CommentEnd,
}


def _skip_to(tokens: list, i: int, cls: type) -> int:
    while i < len(tokens) and type(tokens[i]) is not cls:
        i += 1
    return i


def _skip_balanced(tokens: list, i: int, open_cls: type, close_cls: type) -> int:
    depth = 0
    while i < len(tokens):
        cls = type(tokens[i])
        depth += (cls is open_cls) - (cls is close_cls)
        if depth == 0:
            return i
        i += 1
    return i


def _plain(tokens: list, i: int, stops: tuple[type, ...]) -> tuple[str, int]:
    """Concatenate Text/entity tokens up to the first token of a `stops` class."""
    parts: list[str] = []
    while i < len(tokens) and type(tokens[i]) not in stops:
        if type(tokens[i]) is tk.Text:
            parts.append(tokens[i]["text"])
        elif type(tokens[i]) is tk.HTMLEntityStart:
            i = _entity(tokens, i + 1, parts.append) - 1
        i += 1
    return "".join(parts), i


def _wikilink(tokens: list, i: int, emit: Callable[[str], object]) -> int:
    title, i = _plain(tokens, i, (tk.WikilinkSeparator, tk.WikilinkClose))
    if i < len(tokens) and type(tokens[i]) is tk.WikilinkSeparator:
        if i + 1 < len(tokens) and type(tokens[i + 1]) is tk.WikilinkClose:
            emit(_pipe_trick(title))  # `[[Foo (bar)|]]` shows "Foo"
            return i + 2
        return i + 1  # the label renders in the main loop; its WikilinkClose emits nothing
    emit(title.lstrip(": "))  # `[[:Category:X]]` shows "Category:X"
    return i + 1


def _pipe_trick(title: str) -> str:
    title = title.lstrip(":").split(":", 1)[-1]
    return re.sub(r"\s*[(,].*$", "", title)


def _external_link(tokens: list, i: int, brackets: bool, emit: Callable[[str], object]) -> int:
    url, i = _plain(tokens, i, (tk.ExternalLinkSeparator, tk.ExternalLinkClose))
    if not brackets:
        emit(url)  # a bare URL in running text is shown as is
    elif i < len(tokens) and type(tokens[i]) is tk.ExternalLinkSeparator:
        return i + 1  # `[url label]`: the label renders in the main loop
    return i + 1  # `[url]` shows as a footnote number: nothing to keep


def _entity(tokens: list, i: int, emit: Callable[[str], object]) -> int:
    """Decode `&name;`, `&#123;`, `&#x41;` (tokens after HTMLEntityStart); return the next index."""
    prefix = ""
    while i < len(tokens) and type(tokens[i]) in (tk.HTMLEntityNumeric, tk.HTMLEntityHex):
        prefix += "#" if type(tokens[i]) is tk.HTMLEntityNumeric else tokens[i]["char"]
        i += 1
    body, i = _plain(tokens, i, (tk.HTMLEntityEnd,))
    emit(html.unescape(f"&{prefix}{body};"))
    return i + 1


def _tag_open(tokens: list, i: int, emit: Callable[[str], object]) -> int:
    """Handle `<name attrs>` / `<name/>`, and wiki-markup tags; return the next index."""
    markup = tokens[i].get("wiki_markup")
    name_tok = tokens[i + 1] if i + 1 < len(tokens) else None
    name = name_tok["text"].strip().lower() if type(name_tok) is tk.Text else ""
    j = i + 1
    while j < len(tokens) and type(tokens[j]) not in (tk.TagCloseOpen, tk.TagCloseSelfclose):
        j += 1  # attributes carry no text
    if j >= len(tokens):
        return j
    if type(tokens[j]) is tk.TagCloseSelfclose:
        if name in ("br", "hr") and not markup:
            emit("\n")
        return j + 1
    if name in _WALK_DROP_TAGS or markup in _TABLE_MARKUP:
        return _skip_body(tokens, j + 1)
    if name in _BLOCK_TAGS:
        emit("\n")
    return j + 1


def _skip_body(tokens: list, i: int) -> int:
    """Skip a tag body and its closing tag; nested bodies open with TagCloseOpen."""
    depth = 1
    while i < len(tokens):
        cls = type(tokens[i])
        if cls is tk.TagCloseOpen:
            depth += 1
        elif cls is tk.TagCloseClose:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return i


# ---------------------------------------------------------------- post-pass
def _finish(text: str, options: WikitextOptions) -> str:
    for space in _ODD_SPACES:  # `in` is a fast scan; a character-class regex is not
        if space in text:
            text = text.replace(space, " ")
    if "  " in text:
        text = _MULTI_SPACE_RE.sub(" ", text)
    if "(" in text:
        text = _EMPTY_PARENS_RE.sub("", text)
        text = _PAREN_LEAD_RE.sub("(", text)
    for old, new in _PUNCT_FIXES:
        if old in text:
            text = text.replace(old, new)
    if " ." in text:
        text = _SPACE_DOT_RE.sub(".", text)
    # Orphans of unbalanced markup, last: the fixes above can join "{(}" into "{}" etc.
    # One-character `in` checks are fast scans; most pages need no regex pass at all.
    if "[" in text or "]" in text or "{" in text or "}" in text or "<" in text:
        count = 1
        while count:  # removing "[[" from "{[[{" makes a new "{{"
            text, count = _ORPHAN_RE.subn("", text)
    blocks: list[tuple[int, str, bool]] = []  # (heading level or 0, text, blank line before)
    blank = False
    min_chars = options.min_paragraph_chars
    for line in text.split("\n"):
        line = line.strip(" ")
        if line.startswith(_HEADING):
            title = line[2:].strip()
            if title:
                blocks.append((int(line[1]), title, True))
            blank = False
        elif not line or not _HAS_WORD_RE.search(line) or len(line) < min_chars:
            blank = blank or not line
        else:
            after_heading = bool(blocks) and blocks[-1][0] > 0  # a heading and its text stay together
            blocks.append((0, line, blank and not after_heading))
            blank = False
    if not options.keep_empty_sections:
        blocks = _drop_empty_sections(blocks)
    out: list[str] = []
    for k, (_level, line, blank_before) in enumerate(blocks):
        if k:
            out.append("\n\n" if blank_before else "\n")
        out.append(line)
    return "".join(out)


def _drop_empty_sections(blocks: list[tuple[int, str, bool]]) -> list[tuple[int, str, bool]]:
    """Drop headings with no text before the next heading of the same or higher rank."""
    keep = [True] * len(blocks)
    # Walking backwards: the highest rank (lowest level) of the headings between here and
    # the nearest text below; 0 = no text below at all. A heading has text in its section
    # iff nothing of its rank or higher stands between it and that text.
    barrier = 0
    for k in range(len(blocks) - 1, -1, -1):
        level = blocks[k][0]
        if level == 0:
            barrier = 7
        else:
            keep[k] = barrier > level
            barrier = min(barrier, level)
    return [b for b, kept in zip(blocks, keep, strict=True) if kept]
