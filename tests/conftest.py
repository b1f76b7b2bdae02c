import io
import os
import sys

import pytest
import torch
from fitting import fit_full_batch

import robustlab.errors as _errors

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Every deprecation note (`robustlab.errors.deprecated`: renamed keywords via `errors.renamed`, old
# CLI flags, old setting names) is recorded here. Installed before the test modules are imported,
# so `from robustlab.errors import deprecated` binds the recording one; modules loaded earlier are
# re-pointed too. CLI tests run `main()` in this process (tests/clihelp.py), so their notes count.
DEPRECATION_NOTES: list[str] = []
_print_note = _errors.deprecated


def _recorded_note(old: str, new: str) -> None:
    _print_note(old, new)
    swallowed = isinstance(sys.stderr, io.StringIO) and any(  # the report hides notes on purpose
        str(f.f_globals.get("__name__", "")).startswith("robustlab.report.")
        for f in _frames(sys._getframe(1)))
    if not swallowed:
        DEPRECATION_NOTES.append(f"{old} is deprecated; use {new}")


def _frames(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


_errors.deprecated = _recorded_note
for _m in list(sys.modules.values()):
    if getattr(_m, "__name__", "").startswith("robustlab") and getattr(_m, "deprecated", None) is _print_note:
        _m.deprecated = _recorded_note
_checked = [0]  # DEPRECATION_NOTES[:_checked[0]] belong to earlier tests


@pytest.fixture(autouse=True)
def no_deprecated_spelling(request):
    """Fail a test that (or whose fixtures) printed a deprecation note, unless it is marked
    `@pytest.mark.deprecated_spelling` (it uses an old spelling on purpose): the suite must
    speak the current vocabulary, so the old path is exercised only where a test means to."""
    yield
    notes, _checked[0] = DEPRECATION_NOTES[_checked[0]:], len(DEPRECATION_NOTES)
    if notes and request.node.get_closest_marker("deprecated_spelling") is None:
        pytest.fail("old spelling used (mark the test @pytest.mark.deprecated_spelling if on purpose): "
                    + "; ".join(dict.fromkeys(notes)), pytrace=False)


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
    from torch import nn

    from robustlab import data

    train, test = data.synthetic(600, 300, shape=(1, 8, 8), num_classes=4, seed=1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    fit_full_batch(model, train.x, train.y, opt, 150)
    return model.eval(), test
