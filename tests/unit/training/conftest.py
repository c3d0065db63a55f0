"""Run these tiny-model tests on one intra-op thread.

On a busy 2-core machine, tiny matmuls spend their time synchronising OpenMP threads (a 4-layer trace
took 24 s on two threads and 0.6 s on one); the previous setting is restored afterwards.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
