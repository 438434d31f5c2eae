import numpy as np
import pytest
import torch
import torch.nn as nn

from autoprune import cost
from autoprune.models import create_model, default_input_size, list_models

# Torchvision models at 224×224 are costly on 2 CPU cores; the zoo runs at 32×32.
REGISTRY = list_models()


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every layer weights and BN statistics of order one, as a trained model has, so
    that output comparisons are not trivially met by near-zero outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):  # transposed convs too
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model


def input_shape(name: str) -> tuple[int, int, int]:
    s = default_input_size(name)
    return (3, s, s)


@pytest.fixture(scope="session")
def model_cache():
    """(randomized model in eval mode, its space), built and traced once per session for
    each (name, input shape); the shape defaults to the model's usual one. Tests must not
    modify the model."""
    from autoprune.space import SearchSpace

    cache = {}

    def get(name, shape=None):
        key = (name, tuple(shape or input_shape(name)))
        if key not in cache:
            torch.manual_seed(0)
            model = randomize(create_model(name)).eval()
            cache[key] = (model, SearchSpace.from_model(model, key[1]))
        return cache[key]

    return get


@pytest.fixture()
def one_thread():
    """Tiny tensors gain nothing from a second intra-op thread, and when other processes
    share the two cores the threads spin-wait on each other and run 10-50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_widths(space, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(n)]


def assert_no_step_fits(space, widths, max_macs: int) -> None:
    """Every group one grid step wider than ``widths`` breaks the budget: nothing more fits."""
    for g, c in enumerate(space.choices):
        i = c.index(widths[g])
        if i + 1 < len(c):
            wider = list(widths)
            wider[g] = c[i + 1]
            assert cost.macs(space, wider) > max_macs, f"group {g} could still grow to {c[i + 1]}"
