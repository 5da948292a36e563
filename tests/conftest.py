"""Fixtures shared by the whole suite."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: the small convs and LSTMs of the World Models tests run
    many times slower with two threads on a 2-core machine that is also collecting rollouts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
