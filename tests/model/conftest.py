"""Model tests run torch single-threaded.

The debug model's ops are tiny: with several intra-op threads on a shared 2-core CI
box, thread hand-offs dominate and token-by-token generation gets ~10x slower.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
