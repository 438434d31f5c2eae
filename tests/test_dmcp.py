"""DMCP: the Markov gates against the cost model and surgery, and the search end to end."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import random_widths

from autoprune import cost
from autoprune.budget import Limits
from autoprune.data import load_data
from autoprune.errors import CheckpointError
from autoprune.keep import First
from autoprune.latency import ExpectedLatency, predict
from autoprune.models import create_model
from autoprune.optimizers import dmcp
from autoprune.optimizers.dmcp import DMCPConfig, Gates, MarkovChain, budget_loss, search_dmcp
from autoprune.profile import TableConfig, latency_table
from autoprune.space import SearchSpace
from autoprune.surgery import zero_dropped

# VGG's five poolings need 32×32; the others run at 16×16. Searches use 8×8 synthetic images.
SHAPES = {"resnet20": (3, 16, 16), "vgg11": (3, 32, 32), "mobilenetv2": (3, 16, 16)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def spaces(model_cache):
    return lambda name: model_cache(name, SHAPES[name])


@pytest.fixture(scope="module")
def tiny():
    data = load_data("synthetic", val_size=32, n_train=96, n_test=16, image_size=8, num_classes=4)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=4)
    space = SearchSpace.from_model(model, (3, 8, 8))
    return model, space, data


def _tiny_search(tiny, *, budget_macs=None, out_dir=None, latency=None, **options):
    """DMCP at ``budget_macs`` (default half the base's MACs) and, with ``latency`` (table, max_ms), a latency limit."""
    model, space, data = tiny
    config = DMCPConfig(**{"steps": 6, "batch_size": 16, "warmup": 0.34, **options})
    limits = Limits(budget_macs if budget_macs is not None else int(0.5 * cost.base_macs(space)))
    if latency is not None:
        limits = dataclasses.replace(limits, table=latency[0], max_ms=latency[1])
    return search_dmcp(model, space, data, config, out_dir=out_dir, limits=limits)


PRICEY = 1  # the free group whose producing conv the synthetic latency table makes expensive


@pytest.fixture(scope="module")
def pricey_table(tiny, tmp_path_factory):
    """A latency table of the tiny model where every layer costs 0.01 ms except the producer of
    group PRICEY, 0.2 ms per output channel: its width alone decides the latency."""
    model, space, _ = tiny
    gid = space.free[PRICEY]

    def timer(run, info):
        if info["what"] == "model":
            return 3.5
        cout = info["cout"] if info["cout"] is not None else info["cin"]
        return 0.01 + (0.2 * cout if info["layer"].out_group == gid else 0.0)

    config = TableConfig(device="cpu", grid=3, cache_dir=tmp_path_factory.mktemp("latency"))
    return latency_table(model, space, config, timer=timer)[0]


# -- gates on the traced model --------------------------------------------------------------


@pytest.mark.parametrize("name", list(SHAPES))
def test_gated_model_equals_zero_dropped_reference(spaces, name):
    model, space = spaces(name)
    chain = MarkovChain(space)
    x = torch.randn(2, *SHAPES[name], generator=torch.Generator().manual_seed(1))
    gates = Gates(model, space)
    try:
        for widths in random_widths(space, 2, seed=3) + [space.min_widths()]:
            with torch.no_grad():
                ref = zero_dropped(model, space, widths, keep=First()).eval()(x)
                gates.set(chain.masks(widths))  # the 0/1 masks of the sandwich steps
                masked = model(x)
                chain.alpha.copy_(chain.alpha_for(widths))  # P ∈ {0, 1}: the expected-network path
                gates.set(chain.channel_scales(chain.marginal_probs()))
                expected = model(x)
                gates.set(None)
            assert torch.allclose(masked, ref, atol=1e-5, rtol=1e-4)
            assert torch.allclose(expected, ref, atol=1e-5, rtol=1e-4)
    finally:
        gates.remove()
    with torch.no_grad():  # hooks removed: the model is the full model again
        assert torch.equal(model(x), zero_dropped(model, space, space.max_widths(), keep=First())(x))


def test_depthwise_group_is_gated_after_its_norms_only(spaces):
    model, space = spaces("mobilenetv2")
    sites = dict(Gates(model, space).sites)
    dw_convs = [l.name for l in space.graph.layers if l.depthwise]
    assert dw_convs and not set(dw_convs) & set(sites)
    assert not any(l.name in sites for l in space.graph.layers if l.kind == "conv")  # all convs feed a BN


# -- expected widths and MACs ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_expected_macs_equal_cost_model_at_deterministic_chains(spaces, name):
    _, space = spaces(name)
    chain = MarkovChain(space)
    for widths in random_widths(space, 5, seed=7) + [space.min_widths(), space.max_widths()]:
        with torch.no_grad():
            chain.alpha.copy_(chain.alpha_for(widths))
            assert chain.expected_choice() == widths
            assert [float(w) for w in chain.expected_widths()] == list(widths)
            assert float(chain.expected_macs()) == cost.macs(space, widths)


def test_expected_macs_increase_with_every_alpha(spaces):
    _, space = spaces("resnet20")
    chain = MarkovChain(space)
    with torch.no_grad():
        chain.alpha.normal_(0, 1.5, generator=torch.Generator().manual_seed(0))
    chain.expected_macs().backward()
    assert (chain.alpha.grad > 0).all()
    base = float(chain.expected_macs().detach())
    for i in range(0, len(chain.alpha), 7):
        with torch.no_grad():
            chain.alpha[i] += 0.5
            assert float(chain.expected_macs()) > base
            chain.alpha[i] -= 0.5


def test_uniform_init_draws_every_width_equally_often(spaces):
    _, space = spaces("resnet20")
    chain = MarkovChain(space)
    gen = torch.Generator().manual_seed(0)
    draws = np.array([chain.sample(gen) for _ in range(2000)])
    for i, c in enumerate(space.choices):
        freq = np.array([(draws[:, i] == w).mean() for w in c])
        assert np.abs(freq - 1 / len(c)).max() < 0.05
        assert set(draws[:, i]) <= set(c)


def test_cross_entropy_gradient_reaches_every_group_alpha(tiny):
    model, space, data = tiny
    chain = MarkovChain(space)
    gates = Gates(model, space)
    x, y = next(data.batches("train", batch_size=16, train=True, generator=torch.Generator().manual_seed(0)))
    try:
        model.train()
        gates.set(chain.channel_scales(chain.marginal_probs()))
        torch.nn.functional.cross_entropy(model(x), y).backward(inputs=[chain.alpha])
    finally:
        gates.remove()
    for i in range(len(chain)):
        g = chain.alpha.grad[chain.offsets[i]:chain.offsets[i + 1]]
        assert torch.isfinite(g).all() and g.abs().sum() > 0, space.names[i]


# -- budget loss ----------------------------------------------------------------------------


def test_budget_loss_is_zero_in_band_and_grows_outside():
    t = 1000.0
    at = lambda e: float(budget_loss(torch.tensor(e, dtype=torch.float64), t, band=0.05))  # noqa: E731
    assert at(950.0) == at(975.0) == at(1000.0) == 0.0
    assert 0 < at(1010) < at(1100) < at(2000)
    assert 0 < at(940) < at(800) < at(100)


@pytest.mark.parametrize("ratio", [0.15, 0.4, 0.8])
def test_budget_loss_alone_drives_expected_macs_into_band(spaces, ratio):
    _, space = spaces("resnet20")
    chain = MarkovChain(space)
    target = ratio * cost.base_macs(space)
    opt = torch.optim.Adam(chain.parameters(), lr=0.05, betas=(0.5, 0.999))
    for _ in range(300):
        opt.zero_grad()
        budget_loss(chain.expected_macs(), target).backward()
        opt.step()
    e = chain.expected_macs().item()
    assert 0.95 * target <= e <= target * 1.001


def test_budget_loss_with_a_latency_limit_holds_the_tighter_one():
    at = lambda macs, ms: float(budget_loss(torch.tensor(macs, dtype=torch.float64), 1000.0, band=0.05,  # noqa: E731
                                            expected_ms=torch.tensor(ms, dtype=torch.float64), max_ms=10.0))
    assert at(980.0, 5.0) == at(500.0, 9.8) == at(960.0, 9.6) == 0.0  # either one in its band, neither over
    assert 0 < at(500.0, 10.5) < at(500.0, 12.0) and 0 < at(1010.0, 5.0)
    assert 0 < at(500.0, 5.0) and at(500.0, 5.0) == at(500.0, 1.0)  # both below: pulled up by the nearer
    assert at(1100.0, 11.0) > at(1100.0, 5.0)


def test_expected_latency_is_differentiable_in_the_chain(tiny, pricey_table):
    _, space, _ = tiny
    chain = MarkovChain(space)
    expected = ExpectedLatency(pricey_table, space)
    assert all(float(p.detach().sum()) == pytest.approx(1.0) for p in chain.width_probs())
    expected(chain.width_probs()).backward()
    for i in range(len(chain)):
        g = chain.alpha.grad[chain.offsets[i]:chain.offsets[i + 1]]
        if i == PRICEY:  # keeping any block of the expensive group longer costs time
            assert (g > 0).all(), g
        else:  # the other layers' times do not depend on widths in this table
            assert (g.abs() < 1e-12).all(), (space.names[i], g)
    with torch.no_grad():  # a certain chain has the prediction as its expectation
        widths = space.sample(np.random.default_rng(0))
        chain.alpha.copy_(chain.alpha_for(widths))
        assert float(expected(chain.width_probs())) == pytest.approx(predict(pricey_table, space, widths))


def test_a_latency_limit_narrows_the_expensive_group(tiny, pricey_table):
    _, space, _ = tiny
    max_ms = 0.6 * predict(pricey_table, space, space.max_widths())
    limit = Limits(10**12, table=pricey_table, max_ms=max_ms)
    free, limited = (_tiny_search(tiny, arch_lr=0.2, latency=latency) for latency in (None, (pricey_table, max_ms)))
    # The differentiable term moved the chain, before any repair: the expected width shrank.
    assert limited.info["expected_widths"][PRICEY] < free.info["expected_widths"][PRICEY] - 1
    assert limited.info["expected_ms"] <= 1.05 * limit.max_ms and limited.info["max_ms"] == limit.max_ms
    assert limited.widths[PRICEY] < free.widths[PRICEY]
    assert limit.allows(space, limited.widths) and cost.macs(space, limited.widths) <= 0.5 * cost.base_macs(space)
    assert "expected_ms" not in free.info


def test_resume_refuses_a_checkpoint_of_another_latency_limit(tiny, pricey_table, tmp_path):
    _tiny_search(tiny, out_dir=tmp_path, steps=2)
    with pytest.raises(CheckpointError, match="another search"):
        _tiny_search(tiny, out_dir=tmp_path, steps=2, latency=(pricey_table, 0.6 * pricey_table.model_ms))


# -- the search -----------------------------------------------------------------------------


def test_search_returns_allowed_widths_within_budget(tiny, tmp_path):
    model, space, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    budget_macs = int(0.3 * cost.base_macs(space))
    widths, info = _tiny_search(tiny, budget_macs=budget_macs, out_dir=tmp_path)
    assert space.validate(widths) == widths
    assert cost.macs(space, widths) <= budget_macs
    assert info["macs"] == cost.macs(space, widths) and info["method"] == "dmcp"
    assert len(info["expected_widths"]) == len(space) and info["steps"] == 6
    assert (tmp_path / "dmcp.pt").is_file() and not (tmp_path / "chain.json").exists()  # the search writes chain.json
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is untouched


def test_search_is_deterministic_by_seed(tiny):
    a = _tiny_search(tiny, seed=3)
    b = _tiny_search(tiny, seed=3)
    c = _tiny_search(tiny, seed=4)
    assert a.widths == b.widths
    assert a.info["transition_probs"] == b.info["transition_probs"]
    assert a.info["history"] == b.info["history"]
    assert a.info["transition_probs"] != c.info["transition_probs"]


def test_direct_derivation_scores_candidates_of_a_finished_search(tiny, tmp_path):
    budget_macs = int(0.4 * cost.base_macs(tiny[1]))
    first = _tiny_search(tiny, budget_macs=budget_macs, out_dir=tmp_path)
    widths, info = _tiny_search(tiny, budget_macs=budget_macs, out_dir=tmp_path, derive="direct", samples=2,
                                eval_batches=1, recal_batches=1)
    assert info["resumed_from"] == 6  # derivation settings do not invalidate the trained state
    assert info["transition_probs"] == first.info["transition_probs"]
    assert [c["source"] for c in info["candidates"]] == ["expected", "sample", "sample"]
    assert info["candidates"][0]["widths"] == list(first.widths)
    assert all(0 <= c["score"] <= 1 for c in info["candidates"])
    best = max(c["score"] for c in info["candidates"])
    assert list(widths) in [c["widths"] for c in info["candidates"] if c["score"] == best]
    assert cost.macs(tiny[1], widths) <= budget_macs


def test_direct_derivation_scores_on_training_images_when_there_is_no_validation_split(tiny):
    model, space, _ = tiny
    no_val = load_data("synthetic", val_size=0, n_train=96, n_test=16, image_size=8, num_classes=4)
    widths, info = _tiny_search((model, space, no_val), steps=2, derive="direct", samples=1, eval_batches=1,
                                recal_batches=1)
    assert all(0 <= c["score"] <= 1 for c in info["candidates"]) and space.validate(widths) == widths

def test_resume_reaches_the_uninterrupted_state(tiny, tmp_path, monkeypatch):
    straight = _tiny_search(tiny, out_dir=tmp_path / "a", checkpoint_every=2)

    calls = {"n": 0}
    real = dmcp._arch_step

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(dmcp, "_arch_step", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        _tiny_search(tiny, out_dir=tmp_path / "b", checkpoint_every=2)
    monkeypatch.setattr(dmcp, "_arch_step", real)
    saved = torch.load(tmp_path / "b" / "dmcp.pt", weights_only=True)
    assert saved["step"] == 4  # warm-up 2 steps, arch steps 1-2, crash in the third
    resumed = _tiny_search(tiny, out_dir=tmp_path / "b", checkpoint_every=2)
    assert resumed.info["resumed_from"] == 4
    assert resumed.widths == straight.widths
    assert resumed.info["history"] == straight.info["history"]
    a = torch.load(tmp_path / "a" / "dmcp.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "dmcp.pt", weights_only=True)
    assert torch.equal(a["alpha"], b["alpha"])
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_refuses_a_checkpoint_of_another_search(tiny, tmp_path):
    _tiny_search(tiny, out_dir=tmp_path, steps=2)
    with pytest.raises(CheckpointError, match="another search"):
        _tiny_search(tiny, out_dir=tmp_path, steps=2, seed=9)
