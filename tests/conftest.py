import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (tiny models run faster; single-process references use
    the workers' thread count, so the reduction order is the same)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny():
    """A tiny seeded 4-class problem on 1×8×8 images."""
    from robustlab.data import synthetic

    return synthetic(256, 128, shape=(1, 8, 8), num_classes=4, seed=0)


@pytest.fixture(scope="module")
def trained():
    """A small MLP trained on a seeded 4-class 1×8×8 problem, and its 300 test images."""
    import torch.nn.functional as F
    from torch import nn

    from robustlab import data

    train, test = data.synthetic(600, 300, shape=(1, 8, 8), num_classes=4, seed=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    return model.eval(), test
