"""Shared fixtures and helpers. `one_thread`: modules that sample diffusion models use it (`pytestmark`);
`randomise_zero_layers`: tests that compare two computation paths of a network import it."""

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


def randomise_zero_layers(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised layers (SFT heads, kernel and lens heads) weights, so every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 0 and float(p.abs().max()) == 0.0:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return net.eval()
