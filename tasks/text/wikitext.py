"""Wiki markup -> clean plain text for LM training, several times faster than naive parsing.

`clean_wikitext(text, options)` runs in two passes:

1. A linear pre-pass of compiled regexes and one brace-matching scan drops the bulky
   constructs that carry no prose: comments, `<ref>`/`<gallery>`/`<timeline>`... blocks,
   nested templates and tables, File/Category/interlanguage links, quote markup and
   behaviour switches. On the gensim enwiki sample this removes about half the bytes
   and nearly all of the parse nodes.
2. mwparserfromhell's tokenizer (its C extension) reads the much smaller remainder and a
   flat walk over its tokens renders internal/external links, headings, HTML tags and
   entities. We skip mwparserfromhell's tree builder on purpose: building `Wikicode`
   costs ~8x the tokenizer itself and `strip_code()` keeps table cells (`|` residue).

Decisions worth knowing:
- Templates are dropped (we have no template definitions), except a few inline ones
  whose text belongs to the sentence: `lang`, `lang-xx`, `nowrap`, `convert`, dashes...
- Tables (`{| |}` and `<table>`) are dropped: cell text is mostly numbers and names.
- `<math>`/`<chem>` are dropped by default (TeX is not prose; `keep_math` keeps it);
  `<pre>`, `<syntaxhighlight>`, `<source>`, `<code>` keep their text (code is useful data).
- Image captions are dropped with their File: link, as MediaWiki's own text export does.
- Output: one line per paragraph, list item or heading; blocks that were separated by a
  blank line in the source stay separated by one blank line.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import lru_cache

from mwparserfromhell.parser import tokens as tk
from mwparserfromhell.parser import use_c

if use_c:
    from mwparserfromhell.parser._tokenizer import CTokenizer as _Tokenizer
else:  # pure-Python fallback, ~10x slower, still correct
    from mwparserfromhell.parser.tokenizer import Tokenizer as _Tokenizer

# Localized File/Image/Media and Category namespace names of the larger wikis (lowercase);
# the dump's own names can be added through WikitextOptions.
FILE_NAMESPACES = frozenset(
    "file image media файл картинка изображение медия медиа 文件 檔案 档案 图像 圖像 媒体"
    " 媒體 图片 圖片 datei bild medium fichier archivo imagen ficheiro arquivo imagem immagine"
    " plik grafika bestand afbeelding ファイル 画像 파일 그림 dosya resim soubor obrázek súbor"
    " fájl kép fișier imagine αρχείο εικόνα berkas gambar tiedosto kuva fil billede"
    " slika датотека файл зображення tập_tin hình קובץ תמונה ملف صورة پرونده تصویر"
    .replace("_", " ").split()
)
CATEGORY_NAMESPACES = frozenset(
    "category категория 分类 分類 kategorie catégorie categoría categoria kategoria"
    " categorie カテゴリ 분류 kategori kategória κατηγορία luokka kategorija категорија"
    " категорія thể_loại קטגוריה تصنيف رده"
    .replace("_", " ").split()
)
# Short interwiki prefixes that are not languages: their links stay inline text.
INTERWIKI_NOT_LANGUAGE = frozenset(
    "w wikt s q n b v c d m mw voy wmf meta species commons wikipedia wiktionary".split()
)


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
# braces/links inside them), which we keep but mask so the brace scan cannot misread them.
_DROP_TAGS = (
    "ref|references|gallery|timeline|score|graph|imagemap|templatedata|mapframe|maplink"
    "|hiero|inputbox|categorytree|indicator|noinclude|includeonly|templatestyles|section"
    "|chart|charinsert|poll|phonos"
)
_MATH_TAGS = "math|chem|ce"
_OPAQUE_TAGS = "nowiki|pre|syntaxhighlight|source"
_BLOCK_TAG_RE = re.compile(
    rf"<(?P<tag>{_DROP_TAGS}|{_MATH_TAGS}|{_OPAQUE_TAGS})(?:\s[^>]*?)?"
    r"(?:/>|>(?P<body>.*?)</(?P=tag)\s*>)",
    re.I | re.S,
)
_DROP_SET = frozenset(_DROP_TAGS.split("|"))
_MATH_SET = frozenset(_MATH_TAGS.split("|"))
# Characters that would otherwise be read as markup; the tokenizer walk decodes them back.
_MASK = str.maketrans({c: f"&#{ord(c)};" for c in "[]{}|<>'&=*#:;"})

# Runs of braces, and table open/close at line start (`:{|` is an indented table).
# `|}}` at line start closes a template, not a table, hence the lookahead.
_NESTED_RE = re.compile(r"\{\{+|\}\}+|^[ \t:]*\{\||^[ \t]*\|\}(?!\})", re.M)
_LINK_PREFIX_RE = re.compile(r"\[\[[ \t]*([^\[\]|:\n]{1,40}?)[ \t]*:")
_BRACKETS_RE = re.compile(r"\[\[|\]\]|\n")
_LANG_CODE_RE = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8}){0,2}|simple")
_SWITCH_RE = re.compile(r"__[^\W\d_a-z]{3,}__")
_QUOTES_RE = re.compile(r"'{2,}")
_LIST_MARK_RE = re.compile(r"^[*#:;]+[ \t]*", re.M)
_LIST_LINE_RE = re.compile(r"^[*#][^\n]*", re.M)
_HR_RE = re.compile(r"^-{4,}", re.M)

# ---------------------------------------------------------------- post-pass regexes
_ORPHAN_RE = re.compile(r"\[\[|\]\]|\{\{|\}\}|\{\||^\s*\|\}|</?ref\b[^>]*>", re.M | re.I)
_SPACES_RE = re.compile(r"[ \t\u00a0\u2007\u2009\u200a\u202f\u3000]+")
_EMPTY_PARENS_RE = re.compile(r"\(\s*(?:[,;:\u2013-]\s*)*\)")
_PAREN_LEAD_RE = re.compile(r"\(\s*[,;]\s*")
_PAREN_TRAIL_RE = re.compile(r"\s*[,;]\s*\)")
_SPACE_PUNCT_RE = re.compile(r" +([,.])(?=\s|$)| +(\))|(\() +", re.M)
_HAS_WORD_RE = re.compile(r"\w")

# ---------------------------------------------------------------- walk: tag classes
_BLOCK_TAGS = frozenset(
    "p div blockquote center poem pre li ul ol dl dd dt h1 h2 h3 h4 h5 h6 br hr"
    " syntaxhighlight source caption figure".split()
)
_WALK_DROP_TAGS = _DROP_SET | _MATH_SET | frozenset("table style script".split())
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
    if "<!--" in text:
        text = _COMMENT_RE.sub("", text)
    if "<" in text:
        keep_math = options.keep_math
        text = _BLOCK_TAG_RE.sub(lambda m: _block_tag(m, keep_math), text)
    if "{" in text:
        text = _drop_nested(text)
    if "[[" in text:
        text = _drop_special_links(text, _namespaces(options))
    text = _SWITCH_RE.sub("", text)
    text = _QUOTES_RE.sub(_quotes, text)
    text = _HR_RE.sub("", text)
    if not options.keep_lists:
        text = _LIST_LINE_RE.sub("", text)
    return _LIST_MARK_RE.sub("", text)


def _block_tag(m: re.Match[str], keep_math: bool) -> str:
    tag = m.group("tag").lower()
    body = m.group("body")
    if tag in _DROP_SET or body is None or (tag in _MATH_SET and not keep_math):
        return ""
    masked = body.translate(_MASK)
    # Blocks of code/preformatted text stand on their own lines; nowiki/math are inline.
    return f"\n{masked}\n" if tag in ("pre", "syntaxhighlight", "source") else masked


def _quotes(m: re.Match[str]) -> str:
    # '' italic, ''' bold, ''''' both; MediaWiki reads '''' as an apostrophe + bold.
    n = len(m.group())
    return "'" if n == 4 else "'" * max(n - 5, 0)


def _drop_nested(text: str) -> str:
    """Remove `{{templates}}`, `{{{args}}}` and `{| tables |}`, nested in any order."""
    stack: list[list[int]] = []  # [kind (0 braces, 1 table), start, braces left]
    spans: list[tuple[int, int, str]] = []
    for m in _NESTED_RE.finditer(text):
        tok = m.group()
        if tok[0] == "{" and tok[1] == "{":
            stack.append([0, m.start(), len(tok)])
        elif tok[-1] == "|":
            stack.append([1, m.start(), 0])
        elif tok[-2] == "|":
            _close_table(stack, spans, m.end())
        else:
            _close_braces(text, stack, spans, m.start(), len(tok))
    for kind, start, left in stack:
        # An unclosed table runs to the end of the page, as MediaWiki renders it;
        # unclosed braces are literal text, so only the braces themselves go.
        spans.append((start, len(text) if kind else start + left, ""))
    return _apply_spans(text, spans)


def _close_braces(text: str, stack: list[list[int]], spans: list, pos: int, run: int) -> None:
    while run >= 2:
        idx = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][0] == 0), None)
        if idx is None:
            return  # stray closing braces: literal text, the post-pass strips them
        del stack[idx + 1 :]  # tables left open inside a template end with it
        opener = stack[idx]
        take = 3 if opener[2] >= 3 and run >= 3 else 2
        opener[2] -= take
        run -= take
        pos += take
        if opener[2] < 2:
            stack.pop()
            start = opener[1]
            body = text[start + 2 : pos - 2]
            # Only top-level, non-nested templates can render inline text.
            inline = "" if stack or take == 3 or "{{" in body else render_template(body)
            spans.append((start, pos, inline))


def _close_table(stack: list[list[int]], spans: list, end: int) -> None:
    idx = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][0] == 1), None)
    if idx is not None:
        start = stack[idx][1]
        del stack[idx:]
        spans.append((start, end, ""))


def _apply_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    if not spans:
        return text
    spans.sort(key=lambda s: (s[0], -s[1]))
    parts: list[str] = []
    pos = 0
    for start, end, repl in spans:
        if end <= pos:
            continue  # nested inside a span already removed
        parts.append(text[pos:start] if start > pos else "")
        parts.append(repl)
        pos = max(pos, end)
    parts.append(text[pos:])
    return "".join(parts)


# Inline templates whose output is part of the sentence. Everything else is dropped.
_FIXED_TEMPLATES = {
    "ndash": "\u2013", "mdash": "\u2014", "snd": " \u2013 ", "spnd": " \u2013 ",
    "spaced ndash": " \u2013 ", "nbsp": " ", "'": "'", "=": "=", "middot": " \u00b7 ",
    "dot": " \u00b7 ", "·": " \u00b7 ", "en dash": "\u2013", "em dash": "\u2014",
}  # fmt: skip
_FIRST_ARG_TEMPLATES = frozenset(
    "nowrap nobr small smaller big larger em strong abbr sup sub math mvar visible anchor"
    " nihongo sic not a typo proper name linktext".split(" ")
)
_RANGE_WORDS = {"-": "\u2013", "\u2013": "\u2013", "to": " to ", "and": " and ", "or": " or "}
_LINK_PIPES_RE = re.compile(r"\[\[[^\[\]]*\]\]")
_NAMED_ARG_RE = re.compile(r"\s*([^=\[\]{}]+?)\s*=(.*)", re.S)


def render_template(body: str) -> str:
    """The text an inline template such as `{{lang|fr|texte}}` shows; "" for all others."""
    name, _, rest = body.partition("|")
    key = name.strip().lower().replace("_", " ")
    if key in _FIXED_TEMPLATES:
        return _FIXED_TEMPLATES[key]
    args = _positional_args(rest) if rest else []
    if not args:
        return ""
    if key.startswith("lang-") or key in _FIRST_ARG_TEMPLATES:
        return args[0]
    if key in ("lang", "transl", "transliteration"):
        return args[-1] if len(args) > 1 else ""
    if key in ("convert", "cvt") and len(args) >= 2:
        if len(args) >= 4 and args[1] in _RANGE_WORDS:
            return f"{args[0]}{_RANGE_WORDS[args[1]]}{args[2]} {args[3]}"
        return f"{args[0]} {args[1]}"
    if key in ("frac", "sfrac"):
        return {1: "1/{0}", 2: "{0}/{1}"}.get(len(args), "{0} {1}/{2}").format(*args)
    if key in ("circa", "c."):
        return f"c. {args[0]}"
    if key == "as of":
        return f"As of {args[0]}"
    return ""


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
            i = _wikilink(tokens, i + 1, emit)
            continue
        elif cls is tk.ExternalLinkOpen:
            i = _external_link(tokens, i + 1, tok["brackets"], emit)
            continue
        elif cls is tk.TagOpenOpen:
            i = _tag_open(tokens, i, emit)
            continue
        elif cls is tk.TagOpenClose:
            name = tokens[i + 1]
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


def _wikilink(tokens: list, i: int, emit) -> int:
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


def _external_link(tokens: list, i: int, brackets: bool, emit) -> int:
    url, i = _plain(tokens, i, (tk.ExternalLinkSeparator, tk.ExternalLinkClose))
    if not brackets:
        emit(url)  # a bare URL in running text is shown as is
    elif i < len(tokens) and type(tokens[i]) is tk.ExternalLinkSeparator:
        return i + 1  # `[url label]`: the label renders in the main loop
    return i + 1  # `[url]` shows as a footnote number: nothing to keep


def _entity(tokens: list, i: int, emit) -> int:
    body, i = _plain(tokens, i, (tk.HTMLEntityEnd,))
    numeric = hexa = ""
    for tok in tokens[max(i - 3, 0) : i]:
        if type(tok) is tk.HTMLEntityNumeric:
            numeric = "#"
        elif type(tok) is tk.HTMLEntityHex:
            hexa = tok["char"]
    emit(html.unescape(f"&{numeric}{hexa}{body};"))
    return i + 1


def _tag_open(tokens: list, i: int, emit) -> int:
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
    text = _ORPHAN_RE.sub("", text)
    text = _SPACES_RE.sub(" ", text)
    if "(" in text:
        text = _EMPTY_PARENS_RE.sub("", text)
        text = _PAREN_LEAD_RE.sub("(", text)
        text = _PAREN_TRAIL_RE.sub(")", text)
    text = _SPACE_PUNCT_RE.sub(lambda m: m.group(1) or m.group(2) or m.group(3), text)
    blocks: list[tuple[int, str, bool]] = []  # (heading level or 0, text, blank line before)
    blank = False
    min_chars = options.min_paragraph_chars
    for raw in text.split("\n"):
        line = raw.strip()
        if line.startswith(_HEADING):
            title = line[2:].strip()
            if title:
                blocks.append((int(line[1]), title, True))
            blank = False
        elif not line or not _HAS_WORD_RE.search(line) or len(line) < min_chars:
            blank = blank or not line
        else:
            blocks.append((0, line, blank))
            blank = False
    if not options.keep_empty_sections:
        blocks = _drop_empty_sections(blocks)
    out: list[str] = []
    for k, (level, line, blank_before) in enumerate(blocks):
        if k:
            out.append("\n\n" if blank_before else "\n")
        out.append(line)
    return "".join(out)


def _drop_empty_sections(blocks: list[tuple[int, str, bool]]) -> list[tuple[int, str, bool]]:
    """Drop headings with no text before the next heading of the same or higher rank."""
    keep = [True] * len(blocks)
    has_text_below: dict[int, bool] = {}  # heading level -> content seen after it
    for k in range(len(blocks) - 1, -1, -1):
        level = blocks[k][0]
        if level == 0:
            has_text_below = {lv: True for lv in range(1, 7)}
            continue
        keep[k] = has_text_below.get(level, False)
        # A heading with content makes its parents non-empty; a new one resets deeper levels.
        for lv in range(1, 7):
            if lv >= level:
                has_text_below[lv] = False
            elif keep[k]:
                has_text_below[lv] = True
    return [b for b, kept in zip(blocks, keep) if kept]
