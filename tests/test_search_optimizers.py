"""Every registered optimizer through the same checks (feasibility, determinism, replay)."""

import numpy as np
import pytest

from autoprune import cost
from autoprune.errors import SearchError
from autoprune.models import create_model
from autoprune.search import get_optimizer, list_optimizers
from autoprune.search.evaluate import SyntheticObjective
from autoprune.space import SearchSpace

from conftest import randomize

LEARNING = ["abc", "tpe"]


@pytest.fixture(scope="module")
def model():
    return randomize(create_model("resnet20"))


@pytest.fixture(scope="module")
def space(model):
    return SearchSpace.from_model(model, (3, 32, 32))


def run(name, space, model, max_macs, *, seed=0, steps=20, objective=None):
    opt = get_optimizer(name)(space, max_macs, seed=seed, model=model)
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
    assert set(list_optimizers()) == {"abc", "tpe", "random", "uniform", "slimming", "l1-global"}
    with pytest.raises(SearchError, match="unknown search method"):
        get_optimizer("annealing")


@pytest.mark.parametrize("name", list_optimizers())
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


@pytest.mark.parametrize("name", list_optimizers())
def test_same_seed_same_candidates(name, space, model):
    max_macs = int(0.4 * cost.macs(space, space.max_widths()))
    _, a = run(name, space, model, max_macs, seed=3, steps=12)
    _, b = run(name, space, model, max_macs, seed=3, steps=12)
    assert a == b
    if name in ("abc", "tpe", "random"):
        _, c = run(name, space, model, max_macs, seed=4, steps=12)
        assert [w for w, _, _ in a] != [w for w, _, _ in c]


@pytest.mark.parametrize("name", list_optimizers())
def test_state_is_rebuilt_by_replaying_results(name, space, model):
    """A second worker told the same results proposes what the first would: the basis of
    resuming and of sharing one study."""
    max_macs = int(0.4 * cost.macs(space, space.max_widths()))
    first, out = run(name, space, model, max_macs, seed=1, steps=9)
    second = get_optimizer(name)(space, max_macs, seed=1, model=model)
    for widths, role, score in out:
        second.tell(widths, score, role)
    rng = lambda: np.random.default_rng([1, first.n_told, 0])  # noqa: E731
    assert first.ask(rng()) == second.ask(rng())


@pytest.mark.parametrize("name", ["uniform", "slimming", "l1-global"])
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
    opt = get_optimizer("abc")(space, max_macs, seed=0)
    widths, role = opt.ask(np.random.default_rng(0))
    assert role == "init:0" and widths == opt.uniform_feasible()
    # The same question while that candidate is being scored elsewhere: another candidate.
    other, role2 = opt.ask(np.random.default_rng(0), pending=[(widths, role)])
    assert other != widths and role2 == "init:1"


def test_global_threshold_methods_need_the_base(space):
    max_macs = int(0.4 * cost.macs(space, space.max_widths()))
    with pytest.raises(SearchError, match="needs its weights"):
        get_optimizer("slimming")(space, max_macs, seed=0)


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


def test_ask_refuses_an_over_budget_proposal(space):
    from autoprune.search.base import Optimizer

    class Greedy(Optimizer):
        name = "greedy"

        def propose(self, rng, pending):
            return self.space.max_widths(), "greedy"

    opt = Greedy(space, int(0.5 * cost.base_macs(space)))
    with pytest.raises(SearchError, match="'greedy' proposed .* above the budget"):
        opt.ask(np.random.default_rng(0))
