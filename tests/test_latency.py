"""The latency table and budget: correctness with an injected fake timer (no timing noise),
the cache key and corrupt files, the latency limit in repair, the optimizers and the driver,
and a tiny real measurement for the plumbing."""

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import autoprune
from autoprune import profile
from autoprune.api import LatencyConfig
from autoprune.budget import Budget, Limits, parse_latency_budget, repair, uniform_at_budget
from autoprune.cli import main
from autoprune.errors import AutopruneError, BudgetError, SearchError
from autoprune.latency import ExpectedLatency, LatencyTable, lookup, predict
from autoprune.models import create_model
from autoprune.optimizers import Optimizer, register_optimizer, unregister_optimizer
from autoprune.profile import TableConfig, latency_table, table_key
from autoprune.space import SearchSpace

MODEL_MS = 50.0


def latency_limits(table, max_ms, max_macs=10**12):
    """Limits that bind on the predicted latency (and, with ``max_macs``, on the MACs)."""
    return Limits(int(max_macs), table=table, max_ms=max_ms)


def layer_ms(layer, cin, cout):
    """Bilinear in (cin, cout), so interpolation between grid points is exact."""
    cout = cin if cout is None else cout
    return 1e-6 * layer.out_positions * layer.kernel * cin * cout + 1e-3 * (cin + cout) + 0.01


class FakeTimer:
    def __init__(self):
        self.calls = 0

    def __call__(self, run, info):
        self.calls += 1
        if info["what"] == "model":
            return MODEL_MS
        return layer_ms(info["layer"], info["cin"], info["cout"])


@pytest.fixture(scope="module")
def model():
    return create_model("resnet20")


@pytest.fixture(scope="module")
def space(model):
    return SearchSpace.from_model(model, (3, 32, 32), model_name="resnet20")


@pytest.fixture(scope="module")
def table(model, space, tmp_path_factory):
    t, _ = latency_table(model, space, TableConfig(device="cpu", grid=3, cache_dir=tmp_path_factory.mktemp("c")),
                         timer=FakeTimer())
    return t


def exact(table, space, widths):
    """What the fake timer would say for every timed layer, plus the table's overhead."""
    full = space.full_widths(widths)
    layers = {layer.name: layer for layer in space.graph.layers}
    total = table.overhead_ms
    for e in table.entries:
        layer = layers[e.name]
        cin = sum(full[g] for g in layer.in_layout)
        total += layer_ms(layer, cin, full[layer.out_group] if e.outs else None)
    return total


def test_full_model_predicts_its_measured_time(table, space):
    assert predict(table, space, space.max_widths()) == pytest.approx(MODEL_MS)


def test_prediction_interpolates_between_grid_points(table, space):
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = space.sample(rng)
        assert predict(table, space, w) == pytest.approx(exact(table, space, w), rel=1e-6)


def test_norms_and_activations_are_timed_with_their_conv(model, space, table):
    chains = profile.chains(model, space)
    assert chains["conv1"][0] == "bn1" and type(chains["conv1"][1]).__name__ == "ReLU"
    names = {e.name for e in table.entries}
    assert "conv1" in names and "bn1" not in names


def test_lookup_clamps_outside_the_grid(table):
    e = next(e for e in table.entries if e.outs)
    assert lookup(e, e.ins[0] - 1, e.outs[0] - 1) == e.ms[0][0]
    assert lookup(e, e.ins[-1] + 5, e.outs[-1] + 5) == e.ms[-1][-1]


class Concat(nn.Module):
    """Two branches concatenated into one conv: that conv's input width is the sum of two free groups."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(24, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.c(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))


class Chunked(nn.Module):
    """A conv's output cut in halves by ``chunk``: the second half's conv reads a group that
    follows the first conv's (its width is half of it), and so does the conv after the cat."""

    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.c = nn.Conv2d(32, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        p, q = self.a(x).chunk(2, 1)
        return self.fc(self.c(torch.cat([p, self.b(q)], 1)).mean((2, 3)))


def convex_timer(run, info):
    """Convex in the output width, so the expected time is not the time at the expected widths."""
    if info["what"] == "model":
        return 5.0
    cout = info["cout"] if info["cout"] is not None else info["cin"]
    return 1e-3 * info["cin"] + 1e-4 * cout ** 2


def one_hot(space, widths):
    return [torch.tensor([float(w == c) for c in choices], dtype=torch.float64)
            for choices, w in zip(space.choices, widths)]


def test_expected_latency_is_the_expectation_over_the_width_distributions(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    space = SearchSpace.from_model(model, (3, 8, 8))
    table, _ = latency_table(model, space, TableConfig(device="cpu", grid=3, cache_dir=tmp_path), timer=convex_timer)
    gen = torch.Generator().manual_seed(0)
    probs = [torch.softmax(torch.randn(len(c), generator=gen, dtype=torch.float64), 0) for c in space.choices]
    brute = sum(float(np.prod([p[c.index(w)] for p, c, w in zip(probs, space.choices, widths)]))
                * predict(table, space, widths) for widths in itertools.product(*space.choices))
    assert len(space) == 2 and float(ExpectedLatency(table, space)(probs)) == pytest.approx(brute, rel=1e-9)
    at_mean = predict(table, space, [(p * torch.tensor(c, dtype=torch.float64)).sum() for p, c in zip(probs, space.choices)])
    # the check tells the expectation from the time at the expected widths
    assert abs(float(at_mean) - brute) > 0.01 * (brute - table.overhead_ms)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "concat", "chunked"])
def test_expected_latency_at_certain_widths_is_the_prediction(tmp_path, name):
    model = {"concat": Concat, "chunked": Chunked}.get(name, lambda: create_model(name))()
    space = SearchSpace.from_model(model, (3, 8, 8))
    if name == "chunked":  # the halves follow the first conv's group
        assert sum(g.follows is not None for g in space.graph.groups) == 2
    table, _ = latency_table(model, space, TableConfig(device="cpu", grid=3, cache_dir=tmp_path), timer=convex_timer)
    if name == "concat":  # the conv after the concatenation is timed at its expected input width
        assert any(len(set(layer.in_layout) & set(space.free)) == 2 for layer in space.graph.layers)
    expected = ExpectedLatency(table, space)
    rng = np.random.default_rng(0)
    for widths in [space.min_widths(), space.max_widths()] + [space.sample(rng) for _ in range(5)]:
        assert float(expected(one_hot(space, widths))) == pytest.approx(predict(table, space, widths), rel=1e-9)
    probs = [torch.full((len(c),), 1.0 / len(c), dtype=torch.float64, requires_grad=True) for c in space.choices]
    expected(probs).backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in probs)


def test_table_round_trips_through_json(table):
    again = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again == table and again.id == table.id


def test_cache_is_reused_and_force_measures_again(model, space, tmp_path):
    config = TableConfig(device="cpu", grid=2, cache_dir=tmp_path)
    timer = FakeTimer()
    first, path = latency_table(model, space, config, timer=timer)
    n = timer.calls
    second, path2 = latency_table(model, space, config, timer=timer)
    assert timer.calls == n and second == first and path2 == path
    latency_table(model, space, TableConfig(device="cpu", grid=2, cache_dir=tmp_path, force=True), timer=timer)
    assert timer.calls == 2 * n


@pytest.mark.parametrize("change", [{"batch_size": 8}, {"dtype": "bf16"}, {"channels_last": True}, {"grid": 3},
                                    {"statistic": "min"}, {"rounds": 2}])
def test_other_settings_are_another_table(model, space, change):
    cpu = torch.device("cpu")
    assert table_key(model, space, TableConfig(**change), cpu) != table_key(model, space, TableConfig(), cpu)


def test_another_device_is_another_table(model, space, monkeypatch):
    cpu = torch.device("cpu")
    before = table_key(model, space, TableConfig(), cpu)
    monkeypatch.setattr(profile, "device_name", lambda device: "Another CPU")
    assert table_key(model, space, TableConfig(), cpu) != before


@pytest.mark.parametrize("garbage", ["{not json", "[]", '{"schema": "autoprune.latency/1", "entries": 3}'])
def test_a_corrupt_cache_file_is_measured_again_with_a_warning(model, space, tmp_path, capsys, garbage):
    config = TableConfig(device="cpu", grid=2, cache_dir=tmp_path)
    good, path = latency_table(model, space, config, timer=FakeTimer())
    path.write_text(garbage)
    timer = FakeTimer()
    again, _ = latency_table(model, space, config, timer=timer)
    assert timer.calls > 0 and again == good
    assert "warning" in capsys.readouterr().err and LatencyTable.from_dict(json.loads(path.read_text())) == good


@pytest.mark.parametrize("text, kind, value", [
    ("0.5", "ratio", 0.5), (0.5, "ratio", 0.5), ("50%", "ratio", 0.5), ("3.2ms", "ms", 3.2),
    ("800us", "ms", 0.8), ("0.01s", "ms", 10.0), ("1", "ratio", 1.0),
])
def test_parse_latency_budget(text, kind, value):
    b = parse_latency_budget(text)
    assert b.kind == kind and b.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "1.5", "-2ms", "fast", "", "nan", "3.2 hours", True])
def test_parse_latency_budget_rejects(text):
    with pytest.raises(BudgetError) as info:
        parse_latency_budget(text)
    assert "\n" not in str(info.value)


def test_repair_meets_both_budgets(table, space):
    limits = latency_limits(table, 0.8 * MODEL_MS, 0.7 * autoprune.macs(space, space.max_widths()))
    rng = np.random.default_rng(1)
    for _ in range(20):
        w = repair(space, space.sample(rng), limits, rng=rng)
        assert limits.allows(space, w) and autoprune.macs(space, w) <= limits.max_macs
        assert predict(table, space, w) <= limits.max_ms


def test_unreachable_latency_budget_names_the_smallest_ratio(table, space):
    fastest = predict(table, space, space.min_widths()) / MODEL_MS
    with pytest.raises(BudgetError, match=f"{fastest:.3f}"):
        repair(space, space.max_widths(), latency_limits(table, 0.5 * fastest * MODEL_MS))
    with pytest.raises(BudgetError, match=f"latency budget 0.1 .*ratio {fastest:.3f}"):
        Limits.of(space, 1.0, 0.1, table)


def test_tightened_limits_are_a_new_object(table, space):
    limits = Limits.of(space, 0.7, 0.8, table)
    tighter = limits.tightened(0.5 * MODEL_MS)
    assert limits.max_ms == 0.8 * MODEL_MS and tighter.max_ms == 0.5 * MODEL_MS
    assert tighter.max_macs == limits.max_macs and tighter.latency_budget == limits.latency_budget
    assert limits.tightened(MODEL_MS).max_ms == limits.max_ms  # never loosened
    assert limits.to_dict()["latency"] == {"budget": {"value": 0.8, "kind": "ratio", "text": "0.8"},
                                           "max_ms": 0.8 * MODEL_MS, "base_ms": MODEL_MS, "table": table.key,
                                           "table_id": table.id}


@pytest.mark.parametrize("method", ["abc", "tpe", "random", "uniform", "uniform-fill"])
@pytest.mark.parametrize("budget", [None, 0.6])
def test_no_candidate_over_the_latency_budget_is_ever_scored(table, space, tmp_path, method, budget):
    max_ms = 0.8 * MODEL_MS
    scored = []

    def objective(widths):
        scored.append(predict(table, space, widths))
        return float(sum(widths))

    result = autoprune.search("resnet20", budget, method, latency=LatencyConfig(0.8, table), objective=objective,
                              study=autoprune.StudyConfig(trials=6), out=tmp_path)
    assert scored and max(scored) <= max_ms
    record = result.arch["search"]["latency"]
    assert record["table_id"] == table.id and record["table"] == table.key and record["max_ms"] == max_ms
    assert record["predicted_ms"] <= max_ms and record["measured_ms"] > 0 and record["measured_base_ms"] > 0
    if budget is not None:
        assert result.arch["macs"]["pruned"] <= budget * result.arch["macs"]["base"]


@pytest.mark.parametrize("measured, within", [(0.45, True), (0.55, False)])
def test_the_winner_measured_over_its_latency_budget_is_called_so(table, tmp_path, monkeypatch, measured, within):
    # The table predicts every candidate within 0.5; the device, measured beside the base, may not agree:
    # here every pruned model measures the same ratio, so no tightening can bring one under the budget.
    monkeypatch.setattr(autoprune.driver, "measure_rounds", lambda *a, rounds, **k: [[measured * 20.0] * rounds,
                                                                                     [20.0] * rounds])
    result = autoprune.search("resnet20", None, "random", latency=LatencyConfig(0.5, table),
                              objective=lambda w: float(sum(w)), study=autoprune.StudyConfig(trials=3), out=tmp_path)
    record = result.arch["search"]["latency"]
    assert record["measured_max_ms"] == 10.0 and record["within"] is within
    assert len(record["hold"]) == (1 if within else 1 + autoprune.driver.HOLD_TRIES)
    assert ("OVER the budget" in str(result)) is not within


def slower_device(factor, drift=(1.0, 1.3, 0.8, 1.0, 1.6)):
    """measure_rounds on a device where every pruned model runs ``factor`` × its prediction
    relative to the base, and the whole machine's speed drifts from round to round."""
    def measure(table, model, space, vectors, *, rounds, **kw):
        return [[d * (table.model_ms if tuple(w) == tuple(space.max_widths()) else factor * predict(table, space, w))
                 for d in (drift * rounds)[:rounds]] for w in vectors]
    return measure


def held_search(table, out, method="random", latency=0.6, trials=4, objective=lambda w: float(sum(w))):
    return autoprune.search("resnet20", None, method, latency=LatencyConfig(latency, table), objective=objective,
                            study=autoprune.StudyConfig(trials=trials), out=out)


@pytest.mark.parametrize("latency", [0.6, f"{0.6 * MODEL_MS}ms"])
@pytest.mark.parametrize("method", ["random", "uniform", "uniform-fill"])
def test_the_latency_hold_tightens_the_limit_until_the_winner_measures_within(table, space, tmp_path, monkeypatch,
                                                                              latency, method):
    # The table predicts pruned models 10 % too fast: the first winner runs over 0.6 of the base; the hold
    # learns the error from that measurement, scores a candidate for a tighter limit, and keeps it.
    monkeypatch.setattr(autoprune.driver, "measure_rounds", slower_device(1.1))
    result = held_search(table, tmp_path, method, latency)
    record = result.arch["search"]["latency"]
    first, last = record["hold"][0], record["hold"][-1]
    assert first["within"] is False and first["measured_ratio"] == pytest.approx(1.1 * first["predicted_ms"] / MODEL_MS)
    assert first["predicted_ms"] <= 0.6 * MODEL_MS < 1.1 * first["predicted_ms"]
    assert last["within"] is True and record["within"] is True and last["measured_ratio"] <= 0.6
    assert record["max_ms"] == pytest.approx(0.6 * MODEL_MS) and record["held_max_ms"] < 0.6 * MODEL_MS / 1.1
    assert predict(table, space, result.widths) == pytest.approx(record["predicted_ms"])
    assert record["predicted_ms"] <= record["held_max_ms"]
    holds = [t for t in result.trials if t["role"] == "hold"]
    assert holds and holds[-1]["widths"] == " ".join(map(str, result.widths))
    assert "limit tightened" in str(result) and "OVER" not in str(result)
    if method == "uniform":  # a baseline's rule still names its result: one multiplier, under the tighter limit
        tighter = latency_limits(table, record["held_max_ms"], autoprune.macs(space, space.max_widths()))
        assert tuple(result.widths) == uniform_at_budget(space, tighter)


def test_a_rerun_starts_from_the_limit_its_hold_reached(table, tmp_path, monkeypatch):
    monkeypatch.setattr(autoprune.driver, "measure_rounds", slower_device(1.1))
    first = held_search(table, tmp_path)
    again = held_search(table, tmp_path)  # the same study, finished: nothing new to score, the same winner
    assert again.widths == first.widths and len(again.trials) == len(first.trials)
    assert len(again.arch["search"]["latency"]["hold"]) == 1 and again.arch["search"]["latency"]["within"] is True
    more = held_search(table, tmp_path, trials=6)  # the hold's candidates do not count toward the trials
    assert sum(t["role"] != "hold" for t in more.trials) == 6


def test_a_failed_hold_candidate_leaves_the_measured_winner(table, tmp_path, monkeypatch):
    monkeypatch.setattr(autoprune.driver, "measure_rounds", slower_device(1.1))
    scored = []

    def objective(widths):
        scored.append(widths)
        if len(scored) > 4:  # every candidate after the search's own four
            raise RuntimeError("CUDA out of memory")
        return float(sum(widths))

    result = held_search(table, tmp_path, objective=objective)
    record = result.arch["search"]["latency"]
    assert [t["status"] for t in result.trials if t["role"] == "hold"] == ["failed"]
    assert len(record["hold"]) == 1 and record["within"] is False and "OVER the budget" in str(result)
    assert record["predicted_ms"] == pytest.approx(predict(table, autoprune.SearchSpace.from_model(
        create_model("resnet20"), (3, 32, 32)), result.widths))


def test_the_hold_waits_for_another_worker_scoring_its_candidate(table, space, tmp_path, monkeypatch):
    import threading

    from autoprune.driver import HOLD_MARGIN, hold_latency
    from autoprune.evaluator import EvalResult
    from autoprune.optimizers import get_optimizer
    from autoprune.study import STATUS_OK, TrialStore

    monkeypatch.setattr(autoprune.driver, "measure_rounds", slower_device(1.1))
    max_macs = autoprune.macs(space, space.max_widths())
    optimizer = get_optimizer("uniform")(space, Limits(max_macs, table=table, max_ms=0.6 * MODEL_MS,
                                                       latency_budget=Budget(0.6, "ratio", "0.6")))
    winner = optimizer.uniform_feasible()
    url = f"sqlite:///{tmp_path / 's.db'}"
    store, other = TrialStore(url, "s", meta={}), TrialStore(url, "s", meta={})
    store.finish(store.claim(winner, "uniform", macs=0, params=0), 1.0, STATUS_OK)
    # the vector the hold will name: the uniform one under the limit tightened by the measured excess
    excess = 1.1 * predict(table, space, winner) / MODEL_MS / 0.6
    tighter = optimizer.limits.tightened(predict(table, space, winner) / excess * HOLD_MARGIN)
    candidate = uniform_at_budget(space, tighter)
    tid = other.claim(candidate, "hold", macs=0, params=0)  # another worker's hold is scoring it
    threading.Timer(0.5, lambda: other.finish(tid, 0.9, STATUS_OK)).start()
    scored = []
    held = hold_latency(optimizer, lambda w: scored.append(w) or EvalResult(0.5, STATUS_OK), store, create_model("resnet20"))
    assert scored == [] and held.scored == 0  # nothing scored twice
    assert held.best.widths == candidate and held.best.score == 0.9 and held.steps[-1]["within"] is True


def test_the_driver_refuses_a_proposal_over_the_latency_budget(table, tmp_path):
    @register_optimizer
    class Rogue(Optimizer):
        name = "rogue-latency"
        summary = "ignores repair"

        def propose(self, rng, pending):
            return self.space.max_widths(), "rogue"

    try:
        with pytest.raises(SearchError, match="latency budget"):
            autoprune.search("resnet20", None, "rogue-latency", latency=LatencyConfig("0.9", table),
                             objective="synthetic", study=autoprune.StudyConfig(trials=2), out=tmp_path)
    finally:
        unregister_optimizer("rogue-latency")


def test_cli_latency_table_measures_once_then_reads_the_cache(tmp_path, capsys):
    argv = ["latency-table", "--model", "resnet20", "--device", "cpu", "--grid", "2", "--repeats", "1",
            "--threads", "1", "--cache-dir", str(tmp_path), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["model_ms"] > 0 and first["predicted_full_ms"] == pytest.approx(first["model_ms"])
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["table"] == first["table"]


@pytest.mark.parametrize("argv, message", [
    (["latency-table", "--model", "resnet20", "--device", "cpu", "--batch-size", "0"], "batch-size"),
    (["search", "--model", "resnet20", "--objective", "synthetic"], "--latency-budget"),
    (["search", "--model", "resnet20", "--latency-budget", "fast", "--objective", "synthetic"], "latency budget"),
    (["search", "--model", "resnet20", "--method", "stripe", "--latency-budget", "0.5"], "does not price"),
])
def test_cli_bad_input_is_one_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)] if argv[0] == "search" else argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("autoprune: error:") and message in err and err.count("\n") == 1


def test_staircase_times_every_step_of_one_layer(model, space):
    rows = profile.staircase(model, space, "layer1.0.conv1", TableConfig(device="cpu"), step=4, timer=FakeTimer())
    layer = next(l for l in space.graph.layers if l.name == "layer1.0.conv1")
    assert [w for w, _ in rows] == list(range(4, 17, 4))
    assert [ms for _, ms in rows] == [pytest.approx(layer_ms(layer, 16, w), abs=1e-6) for w in range(4, 17, 4)]


@pytest.mark.parametrize("layer, step, message", [
    ("bn1", None, "not a conv or linear layer"), ("layer1.0.conv1", 0, "step must be a positive integer"),
])
def test_staircase_refuses_what_it_cannot_time(model, space, layer, step, message):
    with pytest.raises(autoprune.errors.AutopruneError, match=message):
        profile.staircase(model, space, layer, step=step, timer=FakeTimer())


def test_cli_staircase_prints_every_width_and_plots(tmp_path, capsys):
    png = tmp_path / "stairs.png"
    argv = ["latency-table", "--model", "resnet20", "--device", "cpu", "--repeats", "1", "--threads", "1",
            "--staircase", "conv1", "--step", "8", "--json", "--plot", str(png)]
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["widths"] == [8, 16] and len(row["ms"]) == 2 and all(ms > 0 for ms in row["ms"])
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_show_latency_puts_the_measured_ratio_beside_the_macs(tmp_path, capsys, space):
    from autoprune.arch import make_arch, save_arch

    arch = make_arch("resnet20", {"num_classes": 10}, space, space.uniform(0.5))
    path = save_arch(arch, tmp_path / "arch.json")
    assert main(["show", str(path), "--latency", "--device", "cpu", "--batch-sizes", "1", "2", "--repeats", "1",
                 "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[lines.index(next(x for x in lines if x.strip().startswith("batch"))) + 1:]]
    assert [r[0] for r in rows] == ["1", "2"]
    for r in rows:
        base, pruned, ratio, macs_ratio = map(float, r[1:])
        assert ratio == pytest.approx(pruned / base, abs=2e-3)
        assert macs_ratio == pytest.approx(arch["macs"]["pruned"] / arch["macs"]["base"], abs=1e-3)
    assert main(["show", str(path), "--latency", "--batch-sizes", "0"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err


def test_staircase_of_a_grouped_conv_steps_by_whole_groups_and_ends_at_full_width():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3, groups=4), nn.Conv2d(32, 4, 1))
    space = SearchSpace.from_model(model, (3, 12, 12))
    rows = profile.staircase(model, space, "1", step=10, timer=FakeTimer())
    assert [w for w, _ in rows] == [12, 24, 32]  # 10 rounded up to whole groups of 4, and the full width


def test_timer_keeps_the_median_or_the_fastest_run(monkeypatch):
    """Runs of 10, 30, 20, 50, 40 ms (a neighbour taking turns with us): the median is 30 ms,
    the minimum 10 ms; the calibration call is long enough to need one call per run."""
    durations = iter([0.5, 0.010, 0.030, 0.020, 0.050, 0.040] * 2)

    def fake_time(run, number):
        return next(durations)

    for statistic, expected in (("median", 30.0), ("min", 10.0)):
        timer = profile.Timer(torch.device("cpu"), warmup=0, repeats=5, statistic=statistic)
        monkeypatch.setattr(timer, "_time", fake_time)
        assert timer(lambda: None) == pytest.approx(expected)


def test_an_unknown_statistic_is_one_clear_error():
    with pytest.raises(AutopruneError, match="unknown latency statistic 'mean'; expected one of median, min"):
        TableConfig(statistic="mean")
    with pytest.raises(AutopruneError, match="statistic"):
        profile.Timer(torch.device("cpu"), statistic="p90")


class NoisyTimer(FakeTimer):
    """The fake timer's times, doubled the first time each thing is timed: a machine busy
    during the first round."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __call__(self, run, info):
        ms = super().__call__(run, info)
        what = (info["what"], getattr(info.get("layer"), "name", None), info.get("cin"), info.get("cout"),
                info.get("widths"))
        first = what not in self.seen
        self.seen.add(what)
        return 2 * ms if first else ms


def test_rounds_keep_the_fastest_of_every_entry_and_of_the_model(model, space, tmp_path):
    """Two rounds with the min statistic: every entry and the model were once timed at their
    true time (the fake timer's), so the table equals the one a quiet machine gives."""
    quiet, _ = latency_table(model, space, TableConfig(device="cpu", grid=2, cache_dir=tmp_path / "q"), timer=FakeTimer())
    noisy = NoisyTimer()
    busy, _ = latency_table(model, space, TableConfig(device="cpu", grid=2, statistic="min", rounds=2,
                                                      cache_dir=tmp_path / "b"), timer=noisy)
    assert busy.entries == quiet.entries and busy.model_ms == quiet.model_ms and busy.overhead_ms == quiet.overhead_ms
    once, _ = latency_table(model, space, TableConfig(device="cpu", grid=2, statistic="min", cache_dir=tmp_path / "o"),
                            timer=NoisyTimer())
    assert once.entries != quiet.entries  # one round sees the busy half of the calls
    assert noisy.calls == 2 * sum(len(e.ms) * len(e.ms[0]) for e in quiet.entries) + 6  # and three models a round


def test_models_measured_beside_each_other_keep_the_table_statistic(model, space, table):
    widths = [space.max_widths(), space.min_widths()]
    seen = []

    def timer(run, info):
        seen.append(info["what"])
        return 5.0 + len(seen)  # later runs slower: the first round is the fastest

    got = profile.measure_beside(dataclasses.replace(table, key={**table.key, "statistic": "min"}), model, space,
                                 widths, rounds=3, timer=timer)
    assert got == [6.0, 7.0] and seen == ["model"] * 6


class Device(FakeTimer):
    """A device where a whole model takes ``curve(sum of its layers' isolated times)``."""

    def __init__(self, table, space, curve):
        super().__init__()
        self.layers = lambda w: exact(table, space, list(w)) - table.overhead_ms
        self.curve = curve

    def __call__(self, run, info):
        if info["what"] == "model":
            return self.curve(self.layers(info["widths"]))
        return super().__call__(run, info)


def test_the_calibration_is_the_line_through_the_full_and_the_smallest_model(model, space, table, tmp_path):
    """A device where a model takes 2 ms plus 1.5 x its layers' isolated times (memory traffic
    between layers, say): the table's overhead and scale recover the line, and every width
    vector is predicted exactly, not only the measured ones."""
    device = Device(table, space, lambda layers: 2.0 + 1.5 * layers)
    got, _ = latency_table(model, space, TableConfig(device="cpu", grid=3, cache_dir=tmp_path), timer=device)
    assert got.scale == pytest.approx(1.5) and got.overhead_ms == pytest.approx(2.0, abs=1e-5)
    rng = np.random.default_rng(3)
    for _ in range(5):
        w = space.sample(rng)
        assert predict(got, space, w) == pytest.approx(2.0 + 1.5 * device.layers(w), rel=1e-5)
    probs = [torch.eye(len(c), dtype=torch.float64)[0] for c in space.choices]
    assert float(ExpectedLatency(got, space)(probs)) == pytest.approx(predict(got, space, space.min_widths()), rel=1e-9)
    assert LatencyTable.from_dict(json.loads(json.dumps(got.to_dict()))) == got


def test_the_middle_model_bends_the_calibration(model, space, table, tmp_path):
    """A device where mid-sized models take longer than the line through the two ends says (on
    a CPU: activations that fall out of cache): the middle model's knot follows the bend, and
    every vector is predicted on the two segments through it."""
    small, full, mid = (exact(table, space, list(w)) - table.overhead_ms
                        for w in (space.min_widths(), space.max_widths(), profile.middle(space)))
    bend = lambda x: 0.4 * min(x - small, (full - x) * (mid - small) / (full - mid))  # noqa: E731
    device = Device(table, space, lambda layers: 2.0 + 1.5 * layers + bend(layers))
    got, _ = latency_table(model, space, TableConfig(device="cpu", grid=3, cache_dir=tmp_path), timer=device)
    assert [x for x, _ in got.knots] == pytest.approx([small, mid, full], rel=1e-5)
    rng = np.random.default_rng(4)
    for _ in range(8):
        w = space.sample(rng)
        assert predict(got, space, w) == pytest.approx(device.curve(device.layers(w)), rel=1e-4)
    straight = dataclasses.replace(got, knots=())
    m = profile.middle(space)
    assert predict(straight, space, m) < predict(got, space, m) == pytest.approx(device.curve(mid), rel=1e-5)
    probs = [torch.eye(len(c), dtype=torch.float64)[len(c) // 2] for c in space.choices]
    at = tuple(c[len(c) // 2] for c in space.choices)
    assert float(ExpectedLatency(got, space)(probs)) == pytest.approx(predict(got, space, at), rel=1e-9)
    assert LatencyTable.from_dict(json.loads(json.dumps(got.to_dict()))) == got


def test_a_middle_model_out_of_line_is_left_out(model, space, table, tmp_path):
    """Timing noise that puts the middle model below the smallest one gives no knots: the line."""
    small = exact(table, space, list(space.min_widths())) - table.overhead_ms
    device = Device(table, space, lambda layers: 2.0 + 1.5 * layers)
    middle = tuple(profile.middle(space))
    timer = lambda run, info: (1.0 if info["what"] == "model" and info["widths"] == middle  # noqa: E731
                               else device(run, info))
    got, _ = latency_table(model, space, TableConfig(device="cpu", grid=3, cache_dir=tmp_path), timer=timer)
    assert got.knots == () and got.scale == pytest.approx(1.5)
    assert predict(got, space, space.min_widths()) == pytest.approx(2.0 + 1.5 * small, rel=1e-5)


def test_a_table_of_the_first_schema_reads_with_scale_one(table):
    old = {k: v for k, v in table.to_dict().items() if k not in ("scale", "knots")}
    old["schema"] = "autoprune.latency/1"
    assert LatencyTable.from_dict(old).scale == 1.0 and LatencyTable.from_dict(old).knots == ()
    with pytest.raises(ValueError):
        LatencyTable.from_dict({**table.to_dict(), "scale": -1.0})


@pytest.mark.parametrize("knots", [[[1.0, 2.0], [1.0, 3.0]], [[1.0, 3.0], [2.0, 2.0]], [[1.0, "x"]], [[1.0, float("inf")]]])
def test_knots_that_do_not_rise_are_refused(table, knots):
    with pytest.raises(ValueError, match="malformed latency table"):
        LatencyTable.from_dict({**table.to_dict(), "knots": knots})
