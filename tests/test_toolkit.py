"""The training toolkit: one batch stream, one seeding, one schedule, one progress bar."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from autoprune.data import load_data
from autoprune.errors import DataError, TrainingError
from autoprune.evaluator import fine_tune, recalibrate_bn
from autoprune.runtime import NoBar, progress_bar
from autoprune.toolkit import batch_stream, epoch_generator, lr_schedule, rng_scope, seed_step


@pytest.fixture(scope="module")
def data():
    # 40 training images in batches of 16: two batches an epoch, the ragged 8 dropped.
    return load_data("synthetic", val_size=8, n_train=48, n_test=8, image_size=8)


def _steps(stream):
    return [(step, x.clone(), y.clone()) for step, x, y in stream]


def _same(a, b):
    return len(a) == len(b) and all(s == t and torch.equal(x, u) and torch.equal(y, v)
                                    for (s, x, y), (t, u, v) in zip(a, b))


def test_epoch_e_is_the_data_shuffled_and_augmented_by_its_generator(data):
    stream = _steps(batch_stream(data, batch_size=16, seed=5, stop=6))
    assert [s for s, _, _ in stream] == list(range(6))
    for epoch in range(3):
        batches = list(data.batches("train", batch_size=16, train=True, generator=epoch_generator(5, epoch)))
        assert len(batches) == 2
        assert _same(stream[2 * epoch:2 * epoch + 2], [(2 * epoch + i, x, y) for i, (x, y) in enumerate(batches)])
    assert not torch.equal(stream[0][2], stream[2][2])  # another epoch, another order


@pytest.mark.parametrize("reseed", [True, False])
@pytest.mark.parametrize("start", [1, 2, 5])
def test_a_stream_started_late_yields_what_the_full_stream_yields_from_there(data, start, reseed):
    full = _steps(batch_stream(data, batch_size=16, seed=3, stop=7, reseed=reseed))
    late = _steps(batch_stream(data, batch_size=16, seed=3, start=start, stop=7, reseed=reseed))
    assert _same(late, full[start:])


def test_one_generator_stream_is_the_evaluators_order(data):
    gen = torch.Generator().manual_seed(4)
    expected = [b for _ in range(3) for b in data.batches("train", batch_size=16, train=True, generator=gen)]
    stream = _steps(batch_stream(data, batch_size=16, seed=4, stop=5, reseed=False))
    assert _same(stream, [(i, x, y) for i, (x, y) in enumerate(expected[:5])])
    reseeded = _steps(batch_stream(data, batch_size=16, seed=4, stop=5))
    assert not _same(stream, reseeded)


def test_the_evaluators_proxy_steps_see_the_one_generator_order(data):
    # Candidate scores depend on this order: it must not move with the resumable streams.
    seen = []
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(4))
    model(torch.zeros(2, 3, 8, 8))
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))

    def one_generator(seed, augment):
        gen = torch.Generator().manual_seed(seed)
        return [x for _ in range(3) for x, _ in data.batches("train", batch_size=16, train=True, generator=gen,
                                                               augment=augment)]

    fine_tune(model, data, steps=5, batch_size=16, seed=6)
    assert len(seen) == 5 and all(torch.equal(a, b) for a, b in zip(seen, one_generator(6, True)))
    seen.clear()
    recalibrate_bn(model, data, batches=3, batch_size=16, seed=2)
    assert len(seen) == 3 and all(torch.equal(a, b) for a, b in zip(seen, one_generator(2, False)))


def test_unaugmented_stream_and_an_empty_split(data):
    (_, x, _), = _steps(batch_stream(data, batch_size=16, seed=0, stop=1, augment=False))
    plain = next(iter(data.batches("train", batch_size=16, train=True, generator=epoch_generator(0, 0),
                                   augment=False)))[0]
    assert torch.equal(x, plain)
    empty = replace(data, train_x=data.train_x[:0], train_y=data.train_y[:0])
    with pytest.raises(DataError, match="no images"):
        next(batch_stream(empty, batch_size=4, seed=0, stop=1))


def test_lr_schedule_warms_up_then_decays():
    total = 100
    cosine = [lr_schedule(s, total, warmup=10) for s in range(total + 5)]
    assert cosine[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert cosine[10] == 1.0 and cosine[55] == pytest.approx(0.5) and cosine[total - 1] < 1e-3
    assert all(a >= b for a, b in zip(cosine[10:], cosine[11:])) and cosine[total:] == [0.0] * 5
    assert lr_schedule(3, 8) == 0.5 * (1 + math.cos(math.pi * 3 / 8))  # the exact form candidates are tuned with
    assert lr_schedule(55, total, warmup=10, decay="linear") == pytest.approx(0.5)
    assert lr_schedule(200, total, warmup=10, decay="linear") == 0.0
    assert lr_schedule(99, total, warmup=10, decay="constant") == 1.0
    with pytest.raises(TrainingError, match="unknown decay"):
        lr_schedule(0, total, decay="step")


def test_step_seeds_repeat_and_do_not_leak():
    before = torch.get_rng_state()
    draws = []
    for _ in range(2):
        with rng_scope(torch.device("cpu")):
            seed_step(7, 3)
            draws.append(torch.rand(4))
    assert torch.equal(draws[0], draws[1]) and torch.equal(torch.get_rng_state(), before)
    with rng_scope(torch.device("cpu")):
        seed_step(7, 4)
        assert not torch.equal(torch.rand(4), draws[0])


def test_a_bar_that_is_off_does_nothing():
    with progress_bar(10, "off", False) as bar:
        assert isinstance(bar, NoBar)
        bar.update()
        bar.set_postfix(loss="1.0")
        bar.set_postfix_str("x")
