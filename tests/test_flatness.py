"""Flatness on tiny models: ξ = 0 gives 0, rescaling invariance, norm layers untouched."""

import torch
import torch.nn.functional as F
from fitting import fit_full_batch
from torch import nn

from robustlab import attacks, models
from robustlab.data import Dataset, synthetic
from robustlab.evaluate.flatness import flatness, landscape

torch.set_num_threads(1)


def random_fgsm(model_fn, x, y, *, generator, eps=0.1):
    """A tiny randomized stand-in attack in the standard `(model, x, y, *, generator)` form
    (returning x_adv itself): uniform start, one signed-gradient step, box."""
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x) * eps
    xa = (x + delta).clamp(0, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model_fn(xa), y), xa)
    return (x + (xa.detach() + eps * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)


def data(n=48):
    train, test = synthetic(n, n, shape=(1, 6, 6), num_classes=3, seed=1)
    return train, test


def trained_mlp(seed=0):
    train, _ = data()
    m = models.create("mlp", in_shape=(1, 6, 6), num_classes=3, hidden=(16, 16), seed=seed)
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    fit_full_batch(m, train.x, train.y, opt, 30)
    return m


def test_xi_zero_is_exactly_zero_with_a_random_attack():
    m = trained_mlp()
    _, test = data()
    for kind in ("average", "worst"):
        r = flatness(m, test, kind=kind, xi=[0.0, 0.05], attack=random_fgsm, samples=3, steps=3,
                     restarts=2, n_test=40, seed=5, progress=False)
        assert r["flatness"][0] == 0.0
        assert r["flatness"][1] > 0.0
        assert r["variant"] == "robust" and r["n"] == 40


def test_clean_variant_matches_direct_loss():
    m = trained_mlp()
    _, test = data()
    r = flatness(m, test, kind="average", xi=0.1, clean=True, samples=2, n_test=40, progress=False)
    with torch.no_grad():
        assert abs(r["loss"] - float(F.cross_entropy(m(test.x[:40]), test.y[:40]))) < 1e-5


def test_worst_case_exceeds_average_case():
    m = trained_mlp()
    _, test = data()
    kw = dict(xi=0.1, attack=random_fgsm, n_test=40, seed=1, progress=False)
    avg = flatness(m, test, kind="average", samples=4, **kw)
    worst = flatness(m, test, kind="worst", steps=8, return_nu=True, **kw)
    assert worst["flatness"][0] > max(avg["details"][0]["perturbed_losses"]) - avg["loss"]
    assert worst["flatness"][0] > 0
    nu = worst["nu"][0]
    params = dict(m.named_parameters())
    for n, v in nu.items():
        assert v.norm() <= 0.1 * params[n].norm() * (1 + 1e-5)


def rescaled(m, alpha):
    """Scale the first linear layer (weight and bias) by α and the next one's weight by 1/α."""
    m2 = models.create("mlp", in_shape=(1, 6, 6), num_classes=3, hidden=(16, 16))
    m2.load_state_dict(m.state_dict())
    lin = [mod for mod in m2.modules() if isinstance(mod, nn.Linear)]
    with torch.no_grad():
        lin[0].weight.mul_(alpha)
        lin[0].bias.mul_(alpha)
        lin[1].weight.div_(alpha)
    return m2


def test_flatness_is_invariant_to_layer_rescaling():
    m = trained_mlp()
    _, test = data()
    m2 = rescaled(m, 3.0)
    with torch.no_grad():
        assert torch.allclose(m(test.x), m2(test.x), atol=1e-5)
    for kind in ("average", "worst"):
        for attack in (random_fgsm, None):
            kw = dict(kind=kind, xi=0.2, attack=attack, clean=attack is None, samples=3,
                      steps=5, n_test=40, seed=3, progress=False)
            a, b = flatness(m, test, **kw), flatness(m2, test, **kw)
            assert abs(a["flatness"][0] - b["flatness"][0]) <= 1e-3 * abs(a["flatness"][0])
            assert a["flatness"][0] > 0


def test_norm_layers_and_buffers_are_untouched():
    _, test = data()
    m = models.create("convnet", in_shape=(1, 6, 6), num_classes=3, width=4, hidden=8, norm="bn")
    with torch.no_grad():  # give BN non-trivial statistics and affine parameters
        m.train()
        m(test.x)
        for mod in m.modules():
            if isinstance(mod, models.Norm2d):
                mod.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    r = flatness(m, test, kind="worst", xi=0.1, attack=random_fgsm, steps=2, n_test=16,
                 progress=False, return_nu=True)
    flatness(m, test, kind="average", xi=0.1, attack=random_fgsm, samples=2, n_test=16, progress=False)
    after = m.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert m.training  # mode restored
    norm_names = {f"{mn}.{pn}" for mn, mod in m.named_modules() if isinstance(mod, models.Norm2d)
                  for pn, _ in mod.named_parameters()}
    assert norm_names and not set(r["nu"][0]) & norm_names
    assert not set(r["parameters"]) & norm_names


def test_train_gap_and_landscape_shapes():
    m = trained_mlp()
    train, test = data()
    r = flatness(m, test, kind="average", xi=0.1, attack=random_fgsm, samples=2, n_test=40,
                 train=train, progress=False)
    assert abs(r["gap"] - (r["loss"] - r["train_loss"])) < 1e-12
    assert 0 <= r["clean_err"] <= r["robust_err"] <= 1
    one = landscape(m, test, dims=1, xi=0.1, points=5, attack=random_fgsm, n_test=20, progress=False)
    assert len(one["clean_loss"]) == len(one["robust_loss"]) == 5
    mid = 2  # coordinate 0: the unperturbed weights
    with torch.no_grad():
        assert abs(one["clean_loss"][mid] - float(F.cross_entropy(m(test.x[:20]), test.y[:20]))) \
            < 1e-5
    assert all(r >= c - 1e-6 for r, c in zip(one["robust_loss"], one["clean_loss"]))
    two = landscape(m, test, dims=2, direction="adversarial", xi=0.1, points=3,
                    attack=random_fgsm, n_test=20, steps=2, progress=False)
    assert len(two["robust_loss"]) == 3 and len(two["robust_loss"][0]) == 3


def test_custom_dataset_object():
    ds = Dataset("toy", torch.rand(8, 1, 6, 6), torch.arange(8) % 3, 3)
    r = flatness(trained_mlp(), ds, kind="average", xi=0.0, clean=True, samples=1,
                 progress=False)
    assert r["flatness"] == [0.0] and r["n"] == 8


def test_a_standard_attack_object_gives_the_default_settings_numbers():
    """`attack=rl.attacks.PGD(...)` (the standard interface) equals the same PGD given as
    settings, exactly; APGD works too; the result file records the object's fields."""
    m = trained_mlp()
    train, test = data()
    kw = dict(xi=[0.0, 0.05], samples=2, steps=2, n_test=24, seed=4, progress=False, train=train)
    for kind in ("average", "worst"):
        a = flatness(m, test, kind=kind, attack_settings={"steps": 3, "eps": 0.1}, **kw)
        b = flatness(m, test, kind=kind, attack=attacks.PGD(eps=0.1, steps=3), **kw)
        for k in ("flatness", "loss", "err", "robust_err", "train_loss"):
            assert a[k] == b[k], (kind, k)
        assert a["flatness"][1] != 0.0  # a real perturbation was measured
        assert b["attack"]["custom"] == "PGD" and b["attack"]["eps"] == 0.1
    la = landscape(m, test, points=3, attack_settings={"steps": 2, "eps": 0.1}, n_test=16,
                   progress=False)
    lb = landscape(m, test, points=3, attack=attacks.PGD(eps=0.1, steps=2), n_test=16, progress=False)
    assert la["robust_loss"] == lb["robust_loss"] and la["clean_loss"] == lb["clean_loss"]
    r = flatness(m, test, kind="average", xi=0.0, attack=attacks.APGD(eps=0.1, steps=3),
                 samples=1, n_test=16, progress=False)
    assert r["flatness"] == [0.0] and r["robust_err"] >= r["clean_err"]


def test_the_older_positional_attack_form_still_works():
    """An attack `(model_fn, x, y, generator) -> x_adv` (no `generator` keyword) is still run."""
    m = trained_mlp()
    _, test = data()

    def positional(f, x, y, g):
        return random_fgsm(f, x, y, generator=g)

    kw = dict(kind="average", xi=0.1, samples=2, n_test=24, seed=2, progress=False)
    assert flatness(m, test, attack=positional, **kw)["flatness"] == \
        flatness(m, test, attack=random_fgsm, **kw)["flatness"]
