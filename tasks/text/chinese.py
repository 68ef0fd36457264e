"""Chinese Wikipedia helpers: language-variant markup and Traditional -> Simplified.

zhwiki stores one text for all Chinese variants and marks variant-specific words with
LanguageConverter markup (https://www.mediawiki.org/wiki/Writing_systems/Syntax):

    -{zh-hans:计算机; zh-hant:電腦;}-    shows the reader's variant
    -{text}-  /  -{R|text}-              shows text unconverted
    -{A|zh-hans:A; zh-hant:B}-           adds a page-wide rule AND shows the variant
    -{H|...}-  -{-|...}-                 adds / removes a rule, shows nothing
    -{T|...}-                            sets the display title, shows nothing

`strip_variant_markup` renders it for a Simplified reader (zh-hans, then zh-cn, zh-sg,
zh-my, zh, then the first variant given). Call it BEFORE `clean_wikitext`: the markup
can wrap links and templates. Then `to_simplified` converts what is still Traditional.

OpenCC package: we use `opencc` (the official Python binding of BYVoid/OpenCC; its wheels
bundle the C++ library and all dictionaries, so it works offline, ~2.4 MB). It was tried
first as the brief asked and installed and converted offline without problems, so the
pure-Python `opencc-python-reimplemented` (slower, unmaintained since 2019) is not needed.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from kiln.errors import KilnError
from kiln.optional import require

# Innermost `-{ ... }-` first so nested markup resolves inside out. `-{{` is a "-" in
# front of a template and `}}-` a template followed by "-", not variant markup.
_BLOCK_RE = re.compile(r"-\{(?!\{)((?:(?!-\{(?!\{)).)*?)(?<!\})\}-", re.S)
_STRAY_RE = re.compile(r"-\{(?!\{)|(?<!\})\}-")
_FLAGS_RE = re.compile(r"\s*([A-Za-z\-]+(?:\s*;\s*[A-Za-z\-]+)*)\s*;?\s*\|(.*)", re.S)
_VARIANT_SPLIT_RE = re.compile(r";\s*(?=(?:[^;:=]*=>\s*)?zh(?:-[a-z]{2,4})?\s*:)")
_VARIANT_RE = re.compile(r"\s*(?:([^;:=]*?)\s*=>\s*)?(zh(?:-[a-z]{2,4})?)\s*:(.*)", re.S)
_PREFERRED = ("zh-hans", "zh-cn", "zh-sg", "zh-my", "zh")
_HIDDEN_FLAGS = frozenset(["H", "-", "T", "N"])
_FLAG_LETTERS = frozenset(["A", "T", "R", "D", "-", "H", "N"])


def strip_variant_markup(text: str) -> str:
    """Replace every `-{...}-` by what a zh-hans reader sees; no `-{`/`}-` survives."""
    if "-{" not in text and "}-" not in text:
        return text
    while True:
        text, count = _BLOCK_RE.subn(lambda m: _render(m.group(1)), text)
        if not count:
            break
    return _STRAY_RE.sub("", text)


def _render(body: str) -> str:
    flags: set[str] = set()
    m = _FLAGS_RE.match(body)
    if m:
        names = {f.strip() for f in m.group(1).split(";")}
        if names <= _FLAG_LETTERS or all(n.startswith("zh") for n in names):
            flags, body = names, m.group(2)
    if flags and all(f.startswith("zh") for f in flags):
        # `-{zh-hans;zh-hk|text}-`: text only shows for the listed variants.
        return body if flags & set(_PREFERRED) else ""
    if flags & _HIDDEN_FLAGS and "A" not in flags:
        return ""
    if "R" in flags:
        return body
    return _pick_variant(body)


def _pick_variant(body: str) -> str:
    """`zh-hans:计算机; zh-hant:電腦;` -> "计算机"; anything else is plain text."""
    variants: dict[str, str] = {}
    for part in _VARIANT_SPLIT_RE.split(body.strip()):
        part = part.strip().rstrip(";").rstrip()
        m = _VARIANT_RE.fullmatch(part)
        if m is None:
            if not variants and part:
                return body  # `-{text}-`: shown unconverted
            continue
        variants.setdefault(m.group(2), m.group(3).strip())
    if not variants:
        return body
    for code in _PREFERRED:
        if code in variants:
            return variants[code]
    return next(iter(variants.values()))


def to_simplified(text: str) -> str:
    """Traditional -> Simplified Chinese with OpenCC's `t2s` (characters and phrases)."""
    return _converter().convert(text)


@lru_cache(maxsize=1)
def _converter() -> Any:
    # Built once: loading the dictionaries takes ~10 ms, converting a page ~0.1 ms.
    opencc = require("opencc", "zh", "Traditional-to-simplified Chinese conversion")
    for config in ("t2s", "t2s.json"):  # older opencc releases want the file name
        try:
            return opencc.OpenCC(config)
        except Exception:  # noqa: BLE001 - opencc raises a bare Exception on a bad name
            continue
    raise KilnError(f"opencc {getattr(opencc, '__version__', '?')} has no 't2s' config: pip install -U 'kiln[zh]'")
