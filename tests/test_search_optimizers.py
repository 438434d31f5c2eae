"""Every registered optimizer through the same checks (feasibility, determinism, replay)."""

import numpy as np
import pytest
from conftest import assert_no_step_fits, randomize

from autoprune import cost
from autoprune.budget import Limits
from autoprune.data import load_data
from autoprune.errors import AutopruneError, SearchError
from autoprune.evaluator import SyntheticObjective
from autoprune.models import create_model
from autoprune.optimizers import (
    Context,
    Optimizer,
    get_optimizer,
    list_methods,
    register_optimizer,
    unregister_optimizer,
)
from autoprune.space import SearchSpace

LEARNING = ["abc", "tpe"]
# Keep DMCP's supernet training to a couple of steps: these tests check the interface.
OPTIONS = {"dmcp": {"steps": 2, "batch_size": 16}, "ssl": {"steps": 2, "batch_size": 16, "bisections": 2}}
# The methods that propose width vectors (stripe writes a stripe mask: tests/test_stripe.py).
CHANNEL = [m for m in list_methods() if get_optimizer(m).granularity == "channel"]


@pytest.fixture(scope="module")
def model():
    return randomize(create_model("resnet20"))


@pytest.fixture(scope="module")
def space(model):
    return SearchSpace.from_model(model, (3, 32, 32))


def make(name, space, model, max_macs, *, seed=0):
    opt = get_optimizer(name)(space, Limits(max_macs), seed=seed, **OPTIONS.get(name, {}))
    cls = type(opt)
    data = load_data("synthetic", val_size=64, n_train=128) if cls.needs_data else None
    opt.prepare(Context(base=model if cls.needs_base else None, data=data))
    return opt


def run(name, space, model, max_macs, *, seed=0, steps=20, objective=None):
    opt = make(name, space, model, max_macs, seed=seed)
    objective = objective or SyntheticObjective(space, seed=7)
    out = []
    for _ in range(steps):
        proposal = opt.ask(np.random.default_rng([seed, opt.n_told, 0]))
        if proposal is None:
            break
        widths, role = proposal
        score = objective(widths).score
        out.append((widths, role, score))
        opt.tell(widths, score, role)
    return opt, out


def test_registry_lists_every_method():
    assert set(list_methods()) == {"abc", "tpe", "random", "uniform", "uniform-fill", "slimming", "l1-global", "dmcp",
                                 "stripe", "hrank", "activation", "ssl"}
    with pytest.raises(SearchError, match="unknown search method"):
        get_optimizer("annealing")


def test_a_custom_optimizer_is_one_class_and_one_registration(space):
    @register_optimizer
    class Widest(Optimizer):
        name = "widest-first"
        summary = "test optimizer"
        one_shot = True

        def propose(self, rng, pending):
            return self.propose_once(self.uniform_feasible(), "widest", pending)

    try:
        assert "widest-first" in list_methods()
        max_macs = int(0.4 * cost.base_macs(space))
        opt = get_optimizer("widest-first")(space, Limits(max_macs), seed=0)
        widths, role = opt.ask(np.random.default_rng(0))
        assert role == "widest" and cost.macs(space, widths) <= max_macs
        opt.tell(widths, 0.5, role)
        assert opt.ask(np.random.default_rng(1)) is None
        with pytest.raises(SearchError, match="already registered"):
            register_optimizer(type("Other", (Optimizer,), {"name": "abc"}))
        with pytest.raises(SearchError, match="has no name"):
            register_optimizer(type("Nameless", (Optimizer,), {}))
        with pytest.raises(SearchError, match="Optimizer subclass"):
            register_optimizer(object)
    finally:
        unregister_optimizer("widest-first")
    assert "widest-first" not in list_methods()


def test_uniform_fill_uses_the_budget_that_uniform_leaves(space):
    for ratio in (0.1, 0.4):
        max_macs = int(ratio * cost.base_macs(space))
        uni = make("uniform", space, None, max_macs).ask(np.random.default_rng(0))[0]
        fill = make("uniform-fill", space, None, max_macs).ask(np.random.default_rng(0))[0]
        assert cost.macs(space, uni) <= cost.macs(space, fill) <= max_macs
        assert all(f >= u for f, u in zip(fill, uni))  # only grown, never shrunk
        assert_no_step_fits(space, fill, max_macs)
        again = make("uniform-fill", space, None, max_macs).ask(np.random.default_rng(5))[0]
        assert again == fill  # a fixed rule: no randomness


@pytest.mark.parametrize("name", CHANNEL)
@pytest.mark.parametrize("ratio", [0.15, 0.5])
def test_every_candidate_is_within_budget(name, ratio, space, model):
    max_macs = int(ratio * cost.macs(space, space.max_widths()))
    _, out = run(name, space, model, max_macs, steps=15)
    assert out
    for widths, role, _ in out:
        assert space.validate(widths) == widths
        assert cost.macs(space, widths) <= max_macs
        assert isinstance(role, str) and role
    assert len({w for w, _, _ in out}) == len(out), "an optimizer proposed a candidate twice"


@pytest.mark.parametrize("name", CHANNEL)
def test_same_seed_same_candidates(name, space, model):
    max_macs = int(0.4 * cost.macs(space, space.max_widths()))
    _, a = run(name, space, model, max_macs, seed=3, steps=12)
    _, b = run(name, space, model, max_macs, seed=3, steps=12)
    assert a == b
    if name in ("abc", "tpe", "random"):
        _, c = run(name, space, model, max_macs, seed=4, steps=12)
        assert [w for w, _, _ in a] != [w for w, _, _ in c]


@pytest.mark.parametrize("name", CHANNEL)
def test_state_is_rebuilt_by_replaying_results(name, space, model):
    """A second worker told the same results proposes what the first would: the basis of
    resuming and of sharing one study."""
    max_macs = int(0.4 * cost.macs(space, space.max_widths()))
    first, out = run(name, space, model, max_macs, seed=1, steps=9)
    second = make(name, space, model, max_macs, seed=1)
    for widths, role, score in out:
        second.tell(widths, score, role)
    rng = lambda: np.random.default_rng([1, first.n_told, 0])  # noqa: E731
    assert first.ask(rng()) == second.ask(rng())


@pytest.mark.parametrize("name", ["uniform", "slimming", "l1-global", "hrank", "activation", "ssl"])
def test_one_shot_methods_propose_once(name, space, model):
    max_macs = int(0.4 * cost.macs(space, space.max_widths()))
    _, out = run(name, space, model, max_macs, steps=5)
    assert len(out) == 1


def test_uniform_is_a_single_multiplier(space, model):
    max_macs = int(0.4 * cost.macs(space, space.max_widths()))
    (widths, _, _), = run("uniform", space, model, max_macs)[1]
    assert widths == space.uniform(np.median([w / c[-1] for w, c in zip(widths, space.choices)])) or \
        max(abs(w / c[-1] - 0.4 ** 0.5) for w, c in zip(widths, space.choices)) < 0.3


def test_abc_starts_from_uniform_and_avoids_pending(space, model):
    max_macs = int(0.4 * cost.macs(space, space.max_widths()))
    opt = get_optimizer("abc")(space, Limits(max_macs), seed=0)
    widths, role = opt.ask(np.random.default_rng(0))
    assert role == "init:0" and widths == opt.uniform_feasible()
    # The same question while that candidate is being scored elsewhere: another candidate.
    other, role2 = opt.ask(np.random.default_rng(0), pending=[(widths, role)])
    assert other != widths and role2 == "init:1"


def test_global_threshold_methods_need_the_base(space):
    max_macs = int(0.4 * cost.macs(space, space.max_widths()))
    with pytest.raises(SearchError, match="needs its weights"):
        get_optimizer("slimming")(space, Limits(max_macs), seed=0).prepare(Context())
    with pytest.raises(SearchError, match="needs data"):
        get_optimizer("dmcp")(space, Limits(max_macs), seed=0).prepare(Context())
    with pytest.raises(SearchError, match="unknown dmcp option"):
        get_optimizer("dmcp")(space, Limits(max_macs), seed=0, stepz=3)


@pytest.mark.parametrize("name, steps", [("abc", 100), ("tpe", 30)])
def test_learning_optimizers_beat_random(name, steps, space, model):
    """On a synthetic objective with a non-uniform optimum, the best candidate found within
    ``steps`` evaluations beats random search's (median over seeds)."""
    max_macs = int(0.3 * cost.macs(space, space.max_widths()))

    def best(method, seed):
        _, out = run(method, space, model, max_macs, seed=seed, steps=steps,
                     objective=SyntheticObjective(space, seed=10 + seed))
        return max(s for _, _, s in out)

    seeds = range(3)
    assert np.median([best(name, s) for s in seeds]) > np.median([best("random", s) for s in seeds])


def test_ssl_bisects_the_penalty_to_the_budget(space, model, one_thread):
    max_macs = int(0.4 * cost.macs(space, space.max_widths()))
    opt = get_optimizer("ssl")(space, Limits(max_macs), seed=0, steps=6, batch_size=16, bisections=2, strength=(1e-3, 50.0))
    opt.prepare(Context(base=model, data=load_data("synthetic", val_size=64, n_train=128)))
    tried = opt.report()["ssl"]["tried"]
    assert len(tried) == 3 and tried[0]["strength"] == pytest.approx(50.0) and tried[0]["fits"]
    # Bisection: every later strength lies between a fitting and a failing one.
    fitting = [t["strength"] for t in tried if t["fits"]]
    assert min(fitting) < 50.0
    assert all(t["macs"] > max_macs for t in tried if not t["fits"])
    widths, role = opt.ask(np.random.default_rng(0))
    assert role == "ssl" and cost.macs(space, widths) <= max_macs
    assert cost.macs(space, widths) >= 0.9 * max_macs  # the leftover budget is used


def test_data_driven_producers_need_data(space, model):
    max_macs = int(0.4 * cost.macs(space, space.max_widths()))
    for name in ("hrank", "activation", "ssl"):
        assert get_optimizer(name).needs_data and get_optimizer(name).needs_base
        with pytest.raises((SearchError, AutopruneError)):
            get_optimizer(name)(space, Limits(max_macs), seed=0).prepare(Context(base=model))
