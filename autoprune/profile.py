"""Measure a :class:`~autoprune.latency.LatencyTable` on this device, and cache it.

Every traced conv or linear layer is timed together with the BatchNorm and activation that
run right after it in the model (found by tracing the model with :mod:`torch.fx`), on an
input of the shape it sees in the model, at a grid of (input width, output width) pairs:
every allowed pair when a group has at most ``grid`` widths, else ``grid`` widths spread
over the allowed ones (conv time is close to bilinear in the two widths, which is what
:func:`autoprune.latency.lookup` interpolates). A norm that follows no timed layer is timed
on its own. The unpruned model, the smallest one the space holds and the uniform one halfway
between them in MACs (the widest within the half-way MACs) are timed end to end; against the sums of their layers' times they are
the table's calibration (``knots``, and the line through the two ends, ``overhead_ms`` and
``scale``; see :mod:`autoprune.latency`).

Each time is the median (or the minimum) of ``repeats`` runs after ``warmup`` runs, each run
long enough to time reliably, with CUDA synchronised around it. With ``rounds`` > 1 the whole
table, model included, is measured that many times over and each entry keeps the same
statistic of all its runs: on a machine whose speed changes with its neighbours' load for
seconds at a time, runs spread over minutes see its quiet moments, and the overhead (model
minus layers) is not the difference of a busy and a quiet moment. Tables are cached as JSON
files named by a digest of their key — device name, torch version, dtype, batch size, input
shape, memory format, CPU threads, statistic, rounds and the layers with their grids — so a
table measured once is reused by every later search on the same device and model; ``force``
measures it again, and a file that cannot be read is measured again with a warning.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from autoprune import cost
from autoprune.budget import Limits, uniform_at_budget
from autoprune.checks import check_count
from autoprune.errors import AutopruneError, DeviceError, one_line
from autoprune.files import write_json
from autoprune.graph import Layer, fx_graph_module
from autoprune.latency import Entry, LatencyTable, key_digest, predict
from autoprune.runtime import log, progress_bar, resolve_device
from autoprune.space import SearchSpace
from autoprune.surgery import materialise

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STATISTICS = {"median": statistics.median, "min": min}  # what a latency keeps of its timed runs
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.Hardsigmoid, nn.Sigmoid,
               nn.Tanh, nn.ELU, nn.Mish)
_ACT_FUNCTIONS = {F.relu: nn.ReLU, torch.relu: nn.ReLU, F.relu6: nn.ReLU6, F.silu: nn.SiLU,
                  F.hardswish: nn.Hardswish, F.gelu: nn.GELU}
_ACT_METHODS = {"relu": nn.ReLU, "relu_": nn.ReLU}
# Timer(run, info) -> milliseconds. ``info`` says what is timed: {"what": "layer", "layer":
# Layer, "cin", "cout"} or {"what": "model"}. Tests inject a fake one.
TimerFn = Callable[[Callable[[], object], dict], float]


def check_statistic(statistic: str) -> None:
    """AutopruneError unless ``statistic`` names one of :data:`STATISTICS`."""
    if statistic not in STATISTICS:
        raise AutopruneError(f"unknown latency statistic '{statistic}'; expected one of {', '.join(STATISTICS)}")


@dataclass(frozen=True)
class TableConfig:
    """How a table is measured: device (default CUDA when there is one), batch size, dtype
    (default bf16 on CUDA, fp32 on the CPU), channels-last memory format, widths per axis,
    warm-up and timed runs, the statistic kept of the timed runs, the cache folder and
    whether to measure again.

    ``statistic`` is ``"median"`` or ``"min"``. On a machine shared with other jobs a run's
    time is the model's own plus whatever the neighbours took from it; the fastest run is
    the best estimate of the first, and every time the table, the search and the winner's
    measurement take is then taken the same way.
    """

    device: str | None = None
    batch_size: int = 1
    dtype: str | None = None
    channels_last: bool = False
    grid: int = 6
    warmup: int = 3
    repeats: int = 9
    statistic: str = "median"
    rounds: int = 1
    cache_dir: str | os.PathLike | None = None
    force: bool = False

    def __post_init__(self):
        if self.dtype is not None and self.dtype not in DTYPES:
            raise DeviceError(f"unknown dtype '{self.dtype}'; expected one of {', '.join(DTYPES)}")
        check_statistic(self.statistic)
        for name in ("batch_size", "grid", "repeats", "rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "grid" else 1):
                raise AutopruneError(f"latency table {name.replace('_', '-')} must be an integer of at least "
                                     f"{2 if name == 'grid' else 1}, got {value!r}")

    def resolved_dtype(self, device: torch.device) -> str:
        return self.dtype or ("bf16" if device.type == "cuda" else "fp32")


class Timer:
    """Milliseconds of a call: the median (or the minimum, ``statistic="min"``) of ``repeats``
    timed runs after ``warmup`` runs; each timed run repeats the call until it lasts ``min_ms``
    (short CPU calls are otherwise mostly timer noise), and CUDA is synchronised before the
    clock is read."""

    def __init__(self, device: torch.device, *, warmup: int = 3, repeats: int = 9, min_ms: float = 2.0,
                 statistic: str = "median"):
        check_statistic(statistic)
        self.device, self.warmup, self.repeats, self.min_ms = device, warmup, repeats, min_ms
        self.statistic = statistic

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, run: Callable[[], object], info: dict | None = None) -> float:
        for _ in range(self.warmup):
            run()
        number = 1
        while True:  # calibrate: enough calls per timed run to last min_ms
            seconds = self._time(run, number)
            if seconds * 1e3 >= self.min_ms or number >= 4096:
                break
            number *= 2
        times = [self._time(run, number) / number for _ in range(self.repeats)]
        return STATISTICS[self.statistic](times) * 1e3

    def _time(self, run, number: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(number):
            run()
        self.sync()
        return time.perf_counter() - start


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads (None: leave torch's choice). Part of a CPU table's key."""
    if n is not None:
        check_count(n, "threads")
        torch.set_num_threads(n)


def default_cache_dir() -> Path:
    """``$AUTOPRUNE_CACHE/latency``, else ``$XDG_CACHE_HOME/autoprune/latency``, else
    ``~/.cache/autoprune/latency``."""
    if os.environ.get("AUTOPRUNE_CACHE"):
        return Path(os.environ["AUTOPRUNE_CACHE"]) / "latency"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "autoprune" / "latency"


def device_name(device: torch.device) -> str:
    """The accelerator's or the CPU's model name (tables of different hardware never mix)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return name


# -- what is timed ----------------------------------------------------------------------------

def chains(model: nn.Module, space: SearchSpace) -> dict[str, list[nn.Module]]:
    """For each traced conv/linear layer, the modules that run right after it on its output
    alone (its norm, then an activation), as fresh modules; and each norm so absorbed maps
    to None. Empty when the model cannot be traced by torch.fx as the channel tracer does."""
    try:
        gm = fx_graph_module(model, space.graph)
    except Exception:  # noqa: BLE001 - any tracing failure: time layers alone, never fail here
        return {}
    norms = {layer.name for layer in space.graph.layers if layer.kind == "norm"}
    timed = {layer.name for layer in space.graph.layers if layer.kind != "norm"}
    out: dict[str, list] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in timed:
            continue
        follow, nxt = [], _only_user(node)
        if nxt is not None and nxt.op == "call_module" and nxt.target in norms:
            follow.append(nxt.target)
            out[nxt.target] = None
            nxt = _only_user(nxt)
        act = _activation(gm, nxt) if nxt is not None else None
        out[node.target] = follow + ([act] if act is not None else [])
    return out


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _activation(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        return copy.deepcopy(m) if isinstance(m, ACTIVATIONS) else None
    if node.op == "call_function" and node.target in _ACT_FUNCTIONS:
        return _ACT_FUNCTIONS[node.target]()
    if node.op == "call_method" and node.target in _ACT_METHODS:
        return _ACT_METHODS[node.target]()
    return None


def input_shapes(model: nn.Module, space: SearchSpace) -> dict[str, tuple[int, ...]]:
    """The input shape (batch 1) each traced layer sees in the unpruned model."""
    shapes, hooks = {}, []

    def record(name):
        def hook(module, args):  # returns None: the input is left as it is
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    for layer in space.graph.layers:
        hooks.append(model.get_submodule(layer.name).register_forward_pre_hook(record(layer.name)))
    try:
        was = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *space.graph.input_shape, device=next(model.parameters()).device))
        model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return shapes


def axes(space: SearchSpace, layer: Layer, grid: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(input widths, output widths) to time ``layer`` at; no output widths when its output
    width is its input width (depthwise convs, norms)."""
    choices = {gid: c for gid, c in zip(space.free, space.choices)}
    low, high = space.full_widths(space.min_widths()), space.full_widths(space.max_widths())
    # A group that follows another spans its parent's range, not one width.
    fixed = {g.id: (g.width,) if g.follows is None else (low[g.id], high[g.id]) for g in space.graph.groups}

    def values(gids) -> tuple[int, ...]:
        if len(gids) == 1 and gids[0] in choices:
            return choices[gids[0]]
        lo = sum(choices.get(g, fixed[g])[0] for g in gids)
        hi = sum(choices.get(g, fixed[g])[-1] for g in gids)
        return tuple(sorted({round(lo + (hi - lo) * k / (grid - 1)) for k in range(grid)}))

    ins = spread(values(layer.in_layout), grid)
    tied = layer.kind == "norm" or layer.depthwise
    return ins, () if tied else spread(values((layer.out_group,)), grid)


def spread(values: Sequence[int], n: int) -> tuple[int, ...]:
    """``values`` if at most ``n``, else ``n`` of them evenly spread, both ends kept."""
    if len(values) <= n:
        return tuple(values)
    return tuple(sorted({values[round(k * (len(values) - 1) / (n - 1))] for k in range(n)}))


def layer_module(model: nn.Module, layer: Layer, follow: list, cin: int, cout: int | None) -> nn.Module:
    """A fresh module computing ``layer`` (and what follows it) at the given widths."""
    m = model.get_submodule(layer.name)
    width = cin if cout is None else cout
    if layer.kind == "linear":
        first = nn.Linear(cin * layer.spatial, cout, bias=m.bias is not None)
    elif layer.kind == "norm":
        first = norm_like(m, cin)
    elif layer.transposed:
        first = type(m)(cin, width, m.kernel_size, stride=m.stride, padding=m.padding, output_padding=m.output_padding,
                        dilation=m.dilation, bias=m.bias is not None, padding_mode=m.padding_mode)
    else:
        conv = next(t for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d) if isinstance(m, t))
        groups = cin if layer.depthwise else m.groups
        first = conv(cin, width, m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                     groups=groups, bias=m.bias is not None, padding_mode=m.padding_mode)
    rest = [norm_like(model.get_submodule(f), width) if isinstance(f, str) else f for f in follow]
    return nn.Sequential(first, *rest)


def norm_like(m: nn.Module, width: int) -> nn.Module:
    """A norm of the same kind as ``m`` over ``width`` channels (Identity for kinds whose
    constructor is unknown: they are then not timed)."""
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return type(m)(width, eps=m.eps, affine=m.affine, track_running_stats=m.track_running_stats)
    return nn.Identity()


def _layer_input(shape: tuple[int, ...], layer: Layer, cin: int) -> list[int]:
    shape = list(shape)
    if layer.kind == "linear":
        shape[-1] = cin * layer.spatial
    else:
        shape[1] = cin
    return shape


# -- the table ------------------------------------------------------------------------------------

def table_key(model: nn.Module, space: SearchSpace, config: TableConfig, device: torch.device) -> dict:
    """What a table depends on; two tables with different keys are never confused."""
    follow = chains(model, space)
    layers = []
    for layer in space.graph.layers:
        if follow.get(layer.name, []) is None:
            continue
        ins, outs = axes(space, layer, config.grid)
        after = [f if isinstance(f, str) else type(f).__name__ for f in follow.get(layer.name, [])]
        layers.append([layer.name, repr(model.get_submodule(layer.name)), after, list(ins), list(outs)])
    return {
        "device": str(device), "device_name": device_name(device), "torch": torch.__version__,
        "dtype": config.resolved_dtype(device), "batch_size": config.batch_size,
        "input_shape": list(space.graph.input_shape), "channels_last": bool(config.channels_last),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "statistic": config.statistic, "rounds": config.rounds, "calibration": "full, smallest, middle",
        "layers": hashlib.sha1(json.dumps(layers).encode()).hexdigest()[:16],
    }


def latency_table(model: nn.Module, space: SearchSpace, config: TableConfig | None = None, *,
                  timer: TimerFn | None = None, progress: bool = False) -> tuple[LatencyTable, Path]:
    """The table of ``model`` on ``config.device``: from the cache when it holds it, else
    measured and written there. Returns (table, cache file)."""
    config = config or TableConfig()
    device = resolve_device(config.device)
    key = table_key(model, space, config, device)
    path = Path(config.cache_dir or default_cache_dir()) / f"{key_digest(key)}.json"
    if path.exists() and not config.force:
        try:
            table = LatencyTable.from_dict(json.loads(path.read_text()))
            if table.key == key:
                return table, path
            reason = "its key does not match"
        except (OSError, ValueError) as exc:
            reason = one_line(exc)
        log(f"autoprune: warning: latency table {path} is unusable ({reason}); measuring it again")
    timer = timer or Timer(device, warmup=config.warmup, repeats=config.repeats, statistic=config.statistic)
    table = measure_table(model, space, config, key, device, timer, progress)
    write_json(table.to_dict(), path)
    return table, path


def measure_table(model, space, config: TableConfig, key: dict, device: torch.device, timer: TimerFn,
                  progress: bool = False) -> LatencyTable:
    """Time every layer at its grid and the whole model, ``config.rounds`` times over (see the
    module docstring)."""
    follow = chains(model, space)
    shapes = input_shapes(model, space)
    dtype = DTYPES[config.resolved_dtype(device)]
    todo = [(layer, *axes(space, layer, config.grid)) for layer in space.graph.layers
            if follow.get(layer.name, []) is not None]
    jobs = [(k, i, j, cin, cout) for k, (_, ins, outs) in enumerate(todo)
            for i, cin in enumerate(ins) for j, cout in enumerate(outs or (None,))]
    runs: dict[tuple[int, int, int], list[float]] = {job[:3]: [] for job in jobs}
    ends = (space.max_widths(), space.min_widths(), middle(space))  # the models timed end to end
    model_runs: list[list[float]] = []
    with progress_bar(config.rounds * (len(jobs) + 1), "latency table", progress) as bar:
        for _ in range(config.rounds):
            for k, i, j, cin, cout in jobs:
                layer = todo[k][0]
                module = layer_module(model, layer, follow.get(layer.name, []), cin, cout)
                x = torch.randn(config.batch_size, *_layer_input(shapes[layer.name], layer, cin)[1:])
                info = {"what": "layer", "layer": layer, "cin": cin, "cout": cout}
                runs[k, i, j].append(time_module(module, x, device, dtype, config.channels_last, timer, info))
                bar.update(1)
            model_runs.append([_time_widths(model, space, w, config, device, timer) for w in ends])
            bar.update(1)
    keep = STATISTICS[config.statistic]
    entries = tuple(Entry(layer.name, tuple(ins), tuple(outs),
                          tuple(tuple(round(keep(runs[k, i, j]), 6) for j in range(len(outs) or 1))
                                for i in range(len(ins))))
                    for k, (layer, ins, outs) in enumerate(todo))
    full_ms, small_ms, middle_ms = (keep([r[e] for r in model_runs]) for e in range(3))
    overhead, scale, knots = calibrate(LatencyTable(key, entries, full_ms, 0.0), space,
                                       [(ends[0], full_ms), (ends[1], small_ms), (ends[2], middle_ms)])
    return LatencyTable(key, entries, round(full_ms, 6), round(overhead, 6), round(scale, 6), knots)


def middle(space: SearchSpace) -> tuple[int, ...]:
    """The widest uniform width vector within the MACs half-way between the smallest and the
    unpruned model's."""
    halfway = (cost.macs(space, space.min_widths()) + cost.macs(space, space.max_widths())) // 2
    return uniform_at_budget(space, Limits(halfway))


def calibrate(table: LatencyTable, space: SearchSpace, measured) -> tuple[float, float, tuple]:
    """(overhead, scale, knots) from the measured times of the unpruned model, the smallest one
    the space holds and any others, ``measured = [(widths, ms), ...]`` with the unpruned first
    and the smallest second, against the sums of their layers' entries (``table`` with overhead
    0 and scale 1). Overhead and scale are the line through the two ends; the knots are every
    model's (sum, ms), kept only where they rise with the sum (a point out of line with its
    neighbours, timing noise, is dropped; with fewer than three left, the line alone). Where
    the two ends' sums coincide (nothing to prune) or the line would fall with the layers' time
    (noise), the scale is 1 and the overhead what the full model's layers miss, and no knots."""
    points = [(float(predict(table, space, w)), float(ms)) for w, ms in measured]
    (layers_full, full_ms), (layers_small, small_ms) = points[:2]
    if not (layers_full - layers_small > 1e-9 and full_ms > small_ms):
        return full_ms - layers_full, 1.0, ()
    scale = (full_ms - small_ms) / (layers_full - layers_small)
    inner = sorted(p for p in points[2:] if layers_small + 1e-6 < p[0] < layers_full - 1e-6 and small_ms < p[1] < full_ms)
    knots = [(layers_small, small_ms)]
    for x, y in inner:
        if x > knots[-1][0] + 1e-6 and y >= knots[-1][1]:
            knots.append((x, y))
    knots.append((layers_full, full_ms))
    knots = tuple((round(x, 6), round(y, 6)) for x, y in knots) if len(knots) > 2 else ()
    return full_ms - scale * layers_full, scale, knots


def _time_widths(model, space: SearchSpace, widths, config: TableConfig, device: torch.device, timer: TimerFn) -> float:
    """Milliseconds of ``model`` pruned to ``widths``, end to end, with ``config``'s settings."""
    pruned = materialise(model, space, widths) if tuple(widths) != tuple(space.max_widths()) else model
    return measure_model(pruned, space.graph.input_shape, device=device, batch_size=config.batch_size,
                         dtype=config.resolved_dtype(device), channels_last=config.channels_last, timer=timer,
                         info={"what": "model", "widths": tuple(widths)})


def time_module(module: nn.Module, x: torch.Tensor, device: torch.device, dtype: torch.dtype,
                channels_last: bool, timer: TimerFn, info: dict) -> float:
    """Milliseconds of ``module(x)`` in inference mode, as ``timer`` measures it."""
    module = module.eval().to(device=device, dtype=dtype)
    x = x.to(device=device, dtype=dtype)
    if channels_last and x.dim() == 4:
        module = module.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return float(timer(lambda: module(x), info))


def measure_model(model: nn.Module, input_shape: Sequence[int], *, device="cpu", batch_size: int = 1,
                  dtype: str = "fp32", channels_last: bool = False, timer: TimerFn | None = None,
                  info: dict | None = None) -> float:
    """Measured milliseconds of one forward pass of ``model`` (a copy; inference mode);
    ``info`` is what the timer is told (default ``{"what": "model"}``)."""
    device = resolve_device(device)
    timer = timer or Timer(device)
    x = torch.randn(batch_size, *input_shape)
    return time_module(copy.deepcopy(model), x, device, DTYPES[dtype], channels_last, timer, info or {"what": "model"})


def staircase(model: nn.Module, space: SearchSpace, layer_name: str, config: TableConfig | None = None, *,
              step: int | None = None, timer: TimerFn | None = None, progress: bool = False) -> list[tuple[int, float]]:
    """(output width, ms) of one conv or linear layer at every ``step``-th output width from
    ``step`` to its full width (default: about 64 widths; the full width always; for a
    grouped conv a multiple of its groups), its input at full width, timed with what
    follows it in the model and the settings of ``config``. On most devices the
    curve is a staircase: widths just past a multiple of the hardware's vector or tile width
    cost as much as the next multiple, which is why the search space rounds widths."""
    config = config or TableConfig()
    layers = {layer.name: layer for layer in space.graph.layers if layer.kind in ("conv", "linear")}
    if layer_name not in layers:
        shown = ", ".join(list(layers)[:6])
        raise AutopruneError(f"layer '{layer_name}' is not a conv or linear layer of the model; some that are: {shown}")
    layer = layers[layer_name]
    if layer.depthwise:
        raise AutopruneError(f"layer '{layer_name}' is depthwise: its output width is its input width")
    full = space.graph.groups[layer.out_group].width
    check_count(step, "staircase step")
    step = step or max(1, full // 64)
    step = -(-step // layer.groups) * layer.groups  # a grouped conv keeps its groups: whole steps of them
    device = resolve_device(config.device)
    timer = timer or Timer(device, warmup=config.warmup, repeats=config.repeats, statistic=config.statistic)
    follow = chains(model, space).get(layer_name) or []
    cin = sum(space.graph.groups[g].width for g in layer.in_layout)
    x = torch.randn(config.batch_size, *_layer_input(input_shapes(model, space)[layer_name], layer, cin)[1:])
    dtype = DTYPES[config.resolved_dtype(device)]
    out = []
    with progress_bar(-(-full // step), "staircase", progress) as bar:
        for cout in sorted({*range(step, full + 1, step), full}):
            module = layer_module(model, layer, follow, cin, cout)
            info = {"what": "layer", "layer": layer, "cin": cin, "cout": cout}
            out.append((cout, round(time_module(module, x, device, dtype, config.channels_last, timer, info), 6)))
            bar.update(1)
    return out


def measure_beside(table: LatencyTable, model: nn.Module, space: SearchSpace, vectors: Sequence[Sequence[int]], *,
                   rounds: int | None = None, timer: TimerFn | None = None) -> list[float]:
    """Measured milliseconds of ``model`` pruned to each of ``vectors``, timed in turn
    ``rounds`` times (default: the table's rounds) and keeping the table's statistic of each
    one's runs: models compared with each other see the same moments of a busy machine."""
    keep = STATISTICS[table.key.get("statistic", "median")]
    return [keep(r) for r in measure_rounds(table, model, space, vectors, rounds=rounds, timer=timer)]


def paired_ratio(runs: Sequence[float], base_runs: Sequence[float]) -> float:
    """A model's latency as a ratio of the base's, from :func:`measure_rounds`: the median over
    rounds of the two times taken back to back (a drift of the machine between rounds cancels)."""
    return statistics.median(v / b for v, b in zip(runs, base_runs))


def measure_rounds(table: LatencyTable, model: nn.Module, space: SearchSpace, vectors: Sequence[Sequence[int]], *,
                   rounds: int | None = None, timer: TimerFn | None = None) -> list[list[float]]:
    """Every run of :func:`measure_beside`: one list per vector, one time per round, the
    vectors of a round timed one right after another (so that the ratio of two vectors within
    a round compares them at the same speed of the machine)."""
    k = table.key
    timer = timer or Timer(resolve_device(k["device"]), statistic=k.get("statistic", "median"))
    models = [materialise(model, space, w) for w in vectors]
    runs: list[list[float]] = [[] for _ in models]
    for _ in range(rounds or k.get("rounds", 1)):
        for m, r in zip(models, runs):
            r.append(measure_model(m, space.graph.input_shape, device=k["device"], batch_size=k["batch_size"],
                                   dtype=k["dtype"], channels_last=k["channels_last"], timer=timer))
    return runs
