"""Checksums of a model directory, written with the weights and verified on every load.

A flipped byte in ``model.safetensors`` still parses: the tensors just hold other
numbers, and the model loads and generates garbage silently. So every writer of a
model directory (`trainer.checkpoint.export_final`, `model.hf_interop.export_hf`)
records the sha256 of each file it wrote in ``checksums.json``, and
`model.hf_interop.load_weights` — the one function every loader goes through
(`kiln generate`/`chat`, SFT from a pretrain artifact, evaluate, export) — checks
them before building the model. A directory Kiln wrote must have the file; a
Hugging Face checkpoint from elsewhere has none and is loaded as it is.

Cost: one streaming sha256 pass over the weights (measured in the README).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from kiln.errors import KilnError
from kiln.hashing import sha256_file

CHECKSUMS = "checksums.json"


def write_checksums(directory: str | Path, names: Iterable[str]) -> None:
    """Record the sha256 of files `names` of `directory` (call after they are written, before publishing)."""
    d = Path(directory)
    sums = {name: sha256_file(d / name) for name in sorted(names)}
    (d / CHECKSUMS).write_text(json.dumps(sums, indent=2) + "\n")


def verify_checksums(directory: str | Path, *, required: bool) -> None:
    """KilnError naming the first file that is missing or differs from ``checksums.json``.

    Without ``checksums.json``: an error if `required` (a directory Kiln wrote), else nothing to check.
    """
    d = Path(directory)
    path = d / CHECKSUMS
    if not path.is_file():
        if required:
            raise KilnError(f"{path}: missing, so the weights in {d} cannot be verified; rebuild the model "
                            "artifact (rerun its stage)")
        return
    try:
        sums = json.loads(path.read_text())
        items = sorted(sums.items())
    except (OSError, ValueError, AttributeError) as exc:
        raise KilnError(f"{path}: unreadable ({exc}); rebuild the model artifact (rerun its stage)") from None
    for name, digest in items:
        f = d / name
        if not f.is_file() or sha256_file(f) != digest:
            raise KilnError(f"{f}: does not match its sha256 in {CHECKSUMS} (damaged or changed after it was "
                            "written); rebuild the model artifact (rerun its stage)")
