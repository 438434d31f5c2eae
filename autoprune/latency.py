"""Latency of a width vector, predicted from a table measured on the user's own device.

A :class:`LatencyTable` holds, for every traced layer (a conv or linear layer together with
the BatchNorm and activation that run right after it), its measured time at a grid of
(input width, output width) pairs, plus the measured latency of the whole unpruned model, of
the smallest one the space holds and of one in between. What the layers' isolated times miss
(residual adds, pooling, the Python between layers, and on a CPU costs that grow with the
model, such as memory traffic between layers) is a calibration through those measured points:
a model's time is piecewise linear in the sum of its layers' times, through the ``knots``
(sum, measured time) of the three models. ``overhead_ms`` and ``scale`` are the straight line
through the two ends (``overhead_ms + scale × sum``, what a table without knots predicts). On
a GPU ``scale`` comes out near 1 and ``overhead_ms`` is the launch cost no pruning removes.

:func:`predict` is the latency sibling of :func:`autoprune.cost.macs`: a pure function of
(table, space, widths), with no forward pass. Widths between grid points are interpolated
linearly in each width; widths may be ints or differentiable scalars. :class:`ExpectedLatency`
is its expectation when every free group's width is drawn from a distribution over its allowed
widths (DMCP's Markov chains), differentiable w.r.t. the probabilities.
:mod:`autoprune.profile` measures and caches tables; this module only reads them.

>>> t = LatencyTable(key={}, entries=(Entry("fc", (8, 16), (), ((1.0,), (3.0,))),), model_ms=4.0, overhead_ms=1.0)
>>> lookup(t.entries[0], 12, None)
2.0
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from autoprune.errors import SpaceError
from autoprune.space import SearchSpace


@dataclass(frozen=True)
class Entry:
    """One timed layer: ``ms[i][j]`` is its time at input width ``ins[i]`` and output width
    ``outs[j]``. ``outs`` is empty for layers whose output width is their input width
    (depthwise convs, a norm on its own); then ``ms[i]`` holds a single time."""

    name: str
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "ins": list(self.ins), "outs": list(self.outs), "ms": [list(r) for r in self.ms]}

    @classmethod
    def from_dict(cls, d: dict) -> "Entry":
        ms = tuple(tuple(float(v) for v in row) for row in d["ms"])
        entry = cls(str(d["name"]), tuple(int(w) for w in d["ins"]), tuple(int(w) for w in d["outs"]), ms)
        cols = len(entry.outs) or 1
        if not entry.ins or len(ms) != len(entry.ins) or any(len(r) != cols for r in ms):
            raise ValueError(f"layer '{entry.name}': the time grid does not match its widths")
        if not all(math.isfinite(v) and v >= 0 for r in ms for v in r):
            raise ValueError(f"layer '{entry.name}': times must be finite and non-negative")
        return entry


@dataclass(frozen=True)
class LatencyTable:
    """Measured layer times of one model on one device (see the module docstring).

    ``key`` says what was measured (device name, torch version, dtype, batch size, input
    size, memory format, the layers and their grids); ``model_ms`` is the measured latency
    of the unpruned model; a model's predicted time is :meth:`calibrated` of the sum of its
    entries: piecewise linear through ``knots`` (sum, measured time; by sum), or with fewer
    than two knots ``overhead_ms + scale`` × the sum.
    """

    key: dict
    entries: tuple[Entry, ...]
    model_ms: float
    overhead_ms: float
    scale: float = 1.0
    knots: tuple[tuple[float, float], ...] = ()

    def calibrated(self, layers_ms):
        """A model's time from the sum of its layers' times (a float or a differentiable
        scalar); past the first or the last knot, along the end segment."""
        if len(self.knots) < 2:
            return self.overhead_ms + self.scale * layers_ms
        x = float(layers_ms.detach()) if isinstance(layers_ms, torch.Tensor) else float(layers_ms)
        k = next((i for i in range(1, len(self.knots) - 1) if x <= self.knots[i][0]), len(self.knots) - 1)
        (x0, y0), (x1, y1) = self.knots[k - 1], self.knots[k]
        return y0 + (y1 - y0) / (x1 - x0) * (layers_ms - x0)

    @property
    def id(self) -> str:
        """A short digest of ``key``: the table's file name in the cache."""
        return key_digest(self.key)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "key": self.key, "model_ms": self.model_ms, "overhead_ms": self.overhead_ms,
                "scale": self.scale, "knots": [list(k) for k in self.knots], "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, d) -> "LatencyTable":
        """ValueError (with the reason) unless ``d`` is a well-formed table."""
        if not isinstance(d, dict) or d.get("schema") not in (SCHEMA, "autoprune.latency/2", "autoprune.latency/1"):
            raise ValueError(f"not a latency table (schema {SCHEMA})")
        try:
            entries = tuple(Entry.from_dict(e) for e in d["entries"])
            knots = tuple((float(x), float(y)) for x, y in d.get("knots", ()))
            table = cls(dict(d["key"]), entries, float(d["model_ms"]), float(d["overhead_ms"]), float(d.get("scale", 1.0)),
                        knots)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed latency table ({type(exc).__name__}: {exc})") from None
        values = (table.model_ms, table.overhead_ms, table.scale, *(v for k in knots for v in k))
        if not all(math.isfinite(v) for v in values) or table.scale <= 0:
            raise ValueError("malformed latency table (a time that is not finite, or a scale that is not positive)")
        if any(b[0] <= a[0] or b[1] < a[1] for a, b in zip(knots, knots[1:])):
            raise ValueError("malformed latency table (its knots must rise with the layers' time)")
        return table


SCHEMA = "autoprune.latency/3"  # /2: no knots (the line through the two ends); /1: no scale (1)


def key_digest(key: dict) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _bracket(axis: Sequence[int], w) -> tuple[int, int, object]:
    """(i, j, t): ``w`` lies between ``axis[i]`` and ``axis[j]``, a fraction ``t`` of the way.

    Outside the axis the nearest end is used (t = 0): the grid always spans the widths the
    space allows, so that only happens for a table measured on another space.
    """
    x = float(w.detach()) if isinstance(w, torch.Tensor) else float(w)
    if len(axis) == 1 or x <= axis[0]:
        return 0, 0, 0.0
    if x >= axis[-1]:
        return len(axis) - 1, len(axis) - 1, 0.0
    j = next(k for k, a in enumerate(axis) if a >= x)
    i = j - 1
    return i, j, (w - axis[i]) / (axis[j] - axis[i])


def lookup(entry: Entry, cin, cout):
    """The time of ``entry`` at input width ``cin`` and output width ``cout`` (None for a
    layer whose output follows its input), interpolated linearly between grid points."""
    i0, i1, s = _bracket(entry.ins, cin)
    if not entry.outs:
        return entry.ms[i0][0] * (1 - s) + entry.ms[i1][0] * s
    j0, j1, t = _bracket(entry.outs, cout)
    low = entry.ms[i0][j0] * (1 - t) + entry.ms[i0][j1] * t
    high = entry.ms[i1][j0] * (1 - t) + entry.ms[i1][j1] * t
    return low * (1 - s) + high * s


def check_table(table: LatencyTable, space: SearchSpace) -> None:
    """SpaceError unless every entry of ``table`` names a traced layer of ``space``."""
    names = {layer.name for layer in space.graph.layers}
    missing = [e.name for e in table.entries if e.name not in names]
    if missing:
        raise SpaceError(f"latency table {table.id} is for another model: it times layers {missing[:3]} "
                         "that this model does not have")


def predict(table: LatencyTable, space: SearchSpace, widths: Sequence):
    """Predicted latency in milliseconds of the model pruned to ``widths`` (the table's batch
    size, dtype and device): the table's calibration of the sum of every entry's interpolated time."""
    full = space.full_widths(widths)
    layers = {layer.name: layer for layer in space.graph.layers}
    total = 0.0
    for entry in table.entries:
        layer = layers[entry.name]
        cin = 0
        for g in layer.in_layout:
            cin = cin + full[g]
        cout = full[layer.out_group] if entry.outs else None
        total = total + lookup(entry, cin, cout)
    return table.calibrated(total)


class ExpectedLatency:
    """Expected :func:`predict` of ``table`` over independent per-group width distributions.

    Called with one probability vector per free group, over that group's allowed widths
    (``space.choices[i]``), it returns the expected latency in ms as a float64 tensor,
    differentiable w.r.t. ``probs``. Each entry's time at every pair of allowed widths is
    looked up once, here, so a call is a few small matrix products. The expectation is exact
    for every layer whose input is a single group (a plain conv, a depthwise conv, a linear
    layer); a layer whose input concatenates two or more free groups is timed at its expected
    input width. A group that follows another (a chunk part, a shuffle, a tile) takes its
    width from that group's distribution. The calibration is applied to the expected sum of
    the layers' times (exact for a straight line; for a table with knots, the calibration at
    the expectation). At one-hot ``probs`` it equals :func:`predict` at those widths.
    """

    def __init__(self, table: LatencyTable, space: SearchSpace):
        check_table(table, space)
        self.space, self.table = space, table
        layers = {layer.name: layer for layer in space.graph.layers}
        width_of = _group_widths(space)
        # (input group, output group, times at their allowed widths): a free group's index, or None
        # where the width is fixed (a frozen group, a layer whose output follows its input).
        self._terms: list[tuple[int | None, int | None, torch.Tensor]] = []
        self._mixed: list[tuple[Entry, list, int, int | None, tuple]] = []
        for entry in table.entries:
            layer = layers[entry.name]
            ins = [width_of[g] for g in layer.in_layout]
            fixed_in = sum(ws[0] for i, ws in ins if i is None)
            roots = sorted({i for i, _ in ins if i is not None})
            j, outs = width_of[layer.out_group] if entry.outs else (None, (None,))
            if len(roots) > 1:
                self._mixed.append((entry, [(i, torch.tensor(ws, dtype=torch.float64)) for i, ws in ins
                                            if i is not None], fixed_in, j, outs))
                continue
            i = roots[0] if roots else None
            cins = ([fixed_in + sum(ws[k] for r, ws in ins if r == i) for k in range(len(space.choices[i]))]
                    if i is not None else [fixed_in])
            if i is not None and i == j:  # input and output derive from one group: one width for both
                ms = [[lookup(entry, a, w)] for a, w in zip(cins, outs)]
                self._terms.append((i, None, torch.tensor(ms, dtype=torch.float64)))
            else:
                ms = [[lookup(entry, a, b) for b in outs] for a in cins]
                self._terms.append((i, j, torch.tensor(ms, dtype=torch.float64)))
        self._on_device: dict[torch.device, list] = {}

    def __call__(self, probs: Sequence[torch.Tensor]) -> torch.Tensor:
        probs = [p.double() for p in probs]
        if len(probs) != len(self.space):
            raise SpaceError(f"expected latency needs {len(self.space)} probability vectors, got {len(probs)}")
        device = probs[0].device if probs else torch.device("cpu")
        one = torch.ones(1, dtype=torch.float64, device=device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        if device not in self._on_device:
            self._on_device[device] = [(i, j, ms.to(device)) for i, j, ms in self._terms]
        for i, j, ms in self._on_device[device]:
            pi = probs[i] if i is not None else one
            pj = probs[j] if j is not None else one
            total = total + pi @ ms @ pj
        for entry, free_in, fixed_in, j, outs in self._mixed:
            cin = fixed_in
            for i, ws in free_in:
                cin = cin + (probs[i] * ws.to(device)).sum()
            if j is None:
                total = total + lookup(entry, cin, outs[0])
            else:
                total = total + sum(p * lookup(entry, cin, b) for p, b in zip(probs[j], outs))
        return self.table.calibrated(total)


def _group_widths(space: SearchSpace) -> dict[int, tuple[int | None, tuple[int, ...]]]:
    """For every group, the free group its width derives from (itself, or the parent a chunk part,
    shuffle or tile follows) and its width at each of that group's allowed widths; ``(None,
    (width,))`` for a group whose width never changes."""
    free = {gid: i for i, gid in enumerate(space.free)}
    top = space.max_widths()
    fulls = {i: [space.full_widths(tuple(c if n == i else w for n, w in enumerate(top))) for c in choices]
             for i, choices in enumerate(space.choices)}
    full = space.full_widths(top)
    out = {}
    for g in space.graph.groups:
        root = g
        while root.id not in free and root.follows is not None:
            root = space.graph.groups[root.follows.parent]
        i = free.get(root.id)
        out[g.id] = (None, (full[g.id],)) if i is None else (i, tuple(f[g.id] for f in fulls[i]))
    return out
