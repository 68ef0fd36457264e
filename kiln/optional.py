"""Imports of the packages that only some of Kiln's extras install.

Core dependencies are imported at the top of a module as usual. A package that only an
extra brings (``zh``: opencc, ``s3``: s3fs, ``hf``: transformers, ``demo``: gensim's
sample dumps) is imported through `require` where it is used, so a user without the
extra gets one line naming the extra to install instead of a ``ModuleNotFoundError``
traceback from deep inside a stage.
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
