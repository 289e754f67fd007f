"""Shared fixtures. `one_thread`: modules that sample diffusion models use it (`pytestmark`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    # The CI machine is shared: one intra-op thread avoids OpenMP oversubscription (10x slower when contended).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)
