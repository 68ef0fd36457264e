"""Text library code for the clean stage: source readers and markup cleaners.

- `mediawiki`: stream pages out of MediaWiki XML dumps (bz2/gz/plain, multistream ranges).
- `wikitext`: wiki markup -> plain text (`clean_wikitext`), plus `markup_residue` to measure it.
- `chinese`: zhwiki language-variant markup, page conversion rules, Traditional -> Simplified.

Plain library code: no Prefect or Dask here; `tasks/clean.py` wires it into a stage.
"""

from tasks.text.chinese import simplify_page, strip_variant_markup, to_simplified
from tasks.text.mediawiki import (
    WikiPage,
    iter_pages,
    iter_pages_from_stream,
    iter_pages_in_range,
    read_multistream_index,
    stream_ranges,
)
from tasks.text.wikitext import WikitextOptions, clean_wikitext, markup_residue

__all__ = [
    "WikiPage",
    "WikitextOptions",
    "clean_wikitext",
    "iter_pages",
    "iter_pages_from_stream",
    "iter_pages_in_range",
    "markup_residue",
    "read_multistream_index",
    "simplify_page",
    "stream_ranges",
    "strip_variant_markup",
    "to_simplified",
]
