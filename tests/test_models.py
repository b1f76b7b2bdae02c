import pytest
import torch

from robustlab import models
from robustlab.errors import UserError


@pytest.mark.parametrize("name", models.names())
@pytest.mark.parametrize("norm", models.NORMS)
def test_every_model_builds_and_maps_images_to_logits(name, norm):
    shape = (3, 32, 32) if name in ("resnet20", "wrn") else (1, 28, 28)
    m = models.create(name, in_shape=shape, num_classes=7, norm=norm)
    out = m(torch.rand(2, *shape))
    assert out.shape == (2, 7)


def test_inputs_are_clamped_to_the_unit_box():
    m = models.create("mlp", in_shape=(1, 4, 4), num_classes=3).eval()
    x = torch.rand(5, 1, 4, 4)
    assert torch.equal(m(x * 3 - 1), m((x * 3 - 1).clamp(0, 1)))


def test_norm_scale_is_one_plus_gamma():
    n = models.Norm2d(4, "bn").eval()
    x = torch.randn(3, 4, 5, 5)
    base = n(x)  # γ = 0 → scale 1
    with torch.no_grad():
        n.weight.fill_(0.5)
    assert torch.allclose(n(x) - n.bias.view(1, -1, 1, 1), 1.5 * base, atol=1e-6)
    assert torch.equal(models.Norm2d(4, "gn").weight, torch.zeros(4))


def test_same_seed_same_initial_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = models.create("convnet", in_shape=(1, 28, 28), num_classes=10, seed=5)
    after = torch.rand(1)
    b = models.create("convnet", in_shape=(1, 28, 28), num_classes=10, seed=5)
    c = models.create("convnet", in_shape=(1, 28, 28), num_classes=10, seed=6)
    assert torch.equal(before, after)
    for (_, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.state_dict()["body.0.0.weight"], c.state_dict()["body.0.0.weight"])


def test_perturbable_names_exclude_norm_parameters():
    m = models.create("convnet", in_shape=(1, 28, 28), num_classes=10, norm="bn", width=4)
    names = models.perturbable_names(m)
    assert names and all(".norm" not in n for n in names)
    norm_params = {n for n, mod in m.named_modules() if isinstance(mod, models.Norm2d)}
    assert not any(n.rsplit(".", 1)[0] in norm_params for n in names)
    assert set(names) <= {n for n, _ in m.named_parameters()}


def test_forward_with_replaces_only_given_parameters():
    m = models.create("mlp", in_shape=(1, 2, 2), num_classes=2, hidden=(3,)).eval()
    x = torch.rand(4, 1, 2, 2)
    zero_last = {"body.3.weight": torch.zeros(2, 3), "body.3.bias": torch.tensor([1.0, -1.0])}
    assert torch.equal(models.forward_with(m, zero_last, x), torch.tensor([[1.0, -1.0]]).expand(4, 2))
    assert torch.equal(models.forward_with(m, {}, x), m(x))


def test_unknown_model_and_bad_kwargs_are_user_errors():
    with pytest.raises(UserError, match="unknown model 'vgg'"):
        models.create("vgg", in_shape=(1, 8, 8), num_classes=2)
    with pytest.raises(UserError, match="unknown norm 'ln'"):
        models.create("convnet", in_shape=(1, 8, 8), num_classes=2, norm="ln")
    with pytest.raises(UserError, match="6n\\+4"):
        models.create("wrn", in_shape=(3, 32, 32), num_classes=2, depth=12)
