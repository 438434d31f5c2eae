import numpy as np
import pytest
from conftest import assert_no_step_fits

from autoprune import cost
from autoprune.budget import Limits, parse_budget, repair, utilisation
from autoprune.errors import BudgetError
from autoprune.models import create_model
from autoprune.space import SearchSpace


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_model(create_model("resnet20"), (3, 32, 32))


@pytest.mark.parametrize("text, kind, value", [
    ("0.4", "ratio", 0.4), (0.4, "ratio", 0.4), ("1", "ratio", 1.0), ("40%", "ratio", 0.4),
    ("120M", "macs", 120e6), ("1.2G", "macs", 1.2e9), ("3e8", "macs", 3e8), ("500k", "macs", 5e5),
])
def test_parse_budget(text, kind, value):
    b = parse_budget(text)
    assert b.kind == kind and b.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "-0.2", "1.5", "abcM", "", "nan", "M", "0%", "150%", True])
def test_parse_budget_rejects(text):
    with pytest.raises(BudgetError) as info:
        parse_budget(text)
    assert "\n" not in str(info.value)


def test_max_macs():
    assert parse_budget(0.4).max_macs(1000) == 400
    assert parse_budget("120M").max_macs(10**9) == 120_000_000


def test_unreachable_budget_names_smallest_ratio(space):
    base = cost.macs(space, space.max_widths())
    smallest = cost.macs(space, space.min_widths()) / base
    with pytest.raises(BudgetError, match=f"budget 0.01 .* ratio {smallest:.3f}") as info:
        Limits.of(space, 0.01)
    assert "\n" not in str(info.value)
    with pytest.raises(BudgetError, match=f"{smallest:.3f}"):  # a bare MACs limit: checked when repair needs it
        repair(space, space.max_widths(), Limits(int(0.5 * smallest * base)))


@pytest.mark.parametrize("ratio", [0.1, 0.4, 0.9])
def test_repair_is_feasible_and_uses_the_budget(space, ratio):
    limits = Limits.of(space, ratio)
    assert limits.max_macs == int(ratio * cost.macs(space, space.max_widths()))
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = repair(space, space.sample(rng), limits, rng=rng)
        assert space.validate(w) == w
        assert cost.macs(space, w) <= limits.max_macs and limits.allows(space, w)
        assert_no_step_fits(space, w, limits.max_macs)
        assert utilisation(space, w, limits) > 0.9


def test_repair_keeps_feasible_vector_and_is_deterministic(space):
    limits = Limits(int(0.5 * cost.macs(space, space.max_widths())))
    w0 = repair(space, space.min_widths(), limits, rng=np.random.default_rng(3), grow=False)
    assert w0 == space.min_widths()
    a = repair(space, space.max_widths(), limits, rng=np.random.default_rng(1))
    b = repair(space, space.max_widths(), limits, rng=np.random.default_rng(1))
    assert a == b


def test_limits_are_immutable_and_record_what_was_asked(space):
    import dataclasses

    limits = Limits.of(space, "40%")
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.max_macs = 1
    assert limits.to_dict() == {"value": 0.4, "kind": "ratio", "text": "40%", "max_macs": limits.max_macs,
                                "ratio": limits.max_macs / cost.base_macs(space)}
    with pytest.raises(BudgetError, match="latency"):
        limits.tightened(1.0)  # no latency limit to tighten
