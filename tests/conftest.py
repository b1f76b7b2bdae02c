import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny():
    """A tiny seeded 4-class problem on 1×8×8 images."""
    from robustlab.data import synthetic

    return synthetic(256, 128, shape=(1, 8, 8), num_classes=4, seed=0)
