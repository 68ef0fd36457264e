"""Imports of the packages that only some of Kiln's extras install.

Core dependencies are imported at the top of a module as usual. A module that only an
extra brings (``zh``: opencc) is imported through `require` where it is used, so a user
without the extra gets one line naming the extra to install instead of a
``ModuleNotFoundError`` traceback from deep inside a stage. Two extras are reached
indirectly and name themselves in their own error lines: fsspec loads s3fs (``s3``) by URL
protocol (`storage.remote`), and ``pkg://gensim/…`` sources (``demo``) resolve through
`importlib.resources` (`tasks.download`). transformers (``hf``) is only used by tests.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from kiln.errors import KilnError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise a `KilnError` saying which extra of Kiln installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = exc.name or module.split(".")[0]
        raise KilnError(f"{purpose} needs the {missing!r} package, which Kiln's {extra!r} extra installs: "
                        f"pip install 'kiln[{extra}]'") from None
