"""The search space: one width per free channel group, each from a grid of allowed values.

A candidate is a tuple of ints ordered like :attr:`SearchSpace.free`. Optimizers that work in
the unit cube use :meth:`SearchSpace.encode` / :meth:`SearchSpace.decode`.

>>> from autoprune.models import create_model
>>> space = SearchSpace.from_model(create_model("resnet20"), (3, 32, 32))
>>> space.validate(space.max_widths()) == space.max_widths()
True
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch.nn as nn
import yaml

from autoprune.checks import check_count
from autoprune.errors import SpaceError, WidthError, one_line
from autoprune.graph import ChannelGraph, ChannelGroup, follow_widths, trace

# Per-model YAML ships inside the package (package data in pyproject.toml), so an installed
# wheel searches the same space as a checkout. Read through importlib.resources, not a path
# relative to the source tree: the package may be installed anywhere (or zipped).
SEARCH_SPACES = importlib.resources.files("autoprune") / "search_spaces"
# A candidate: one kept width per free group, in the space's order.
Widths = tuple[int, ...]
_CONFIG_KEYS = {"min_ratio", "step", "round_to", "frozen", "groups"}
_GROUP_KEYS = {"min_ratio", "step", "round_to", "frozen"}


@dataclass(frozen=True)
class SpaceConfig:
    """How allowed widths are made.

    Each free group of width ``W`` may keep ``ceil(r * W)`` channels for ``r`` from
    ``min_ratio`` to 1 in steps of ``step``, rounded up to a multiple of ``round_to`` where
    ``W >= 4 * round_to`` (narrow layers would otherwise have two or three choices). Widths
    that are not multiples of 8 run slower on tensor cores, so 8 is the default.
    ``frozen`` holds glob patterns of group names kept at full width; ``groups`` maps a
    pattern to overrides of ``min_ratio``, ``step``, ``round_to`` or ``frozen`` for matching
    groups.
    """

    min_ratio: float = 0.1
    step: float = 0.05
    round_to: int = 8
    frozen: tuple[str, ...] = ()
    groups: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = ()

    def __post_init__(self):
        _check_grid(self.min_ratio, self.step, self.round_to, "search space")

    @classmethod
    def from_dict(cls, d: dict, source: str = "search space") -> "SpaceConfig":
        if not isinstance(d, dict):
            raise SpaceError(f"{source}: expected a mapping, got {type(d).__name__}")
        unknown = set(d) - _CONFIG_KEYS
        if unknown:
            raise SpaceError(f"{source}: unknown key(s) {sorted(unknown)}; expected {sorted(_CONFIG_KEYS)}")
        groups = d.get("groups") or {}
        if not isinstance(groups, dict):
            raise SpaceError(f"{source}: 'groups' must map a group-name pattern to overrides")
        items = []
        for pattern, over in groups.items():
            if not isinstance(over, dict) or set(over) - _GROUP_KEYS:
                raise SpaceError(f"{source}: groups['{pattern}'] must be a mapping with keys from {sorted(_GROUP_KEYS)}")
            items.append((str(pattern), tuple(sorted(over.items()))))
        frozen = d.get("frozen") or ()
        if not isinstance(frozen, (list, tuple)) or not all(isinstance(f, str) for f in frozen):
            raise SpaceError(f"{source}: 'frozen' must be a list of group-name patterns")
        try:
            return cls(float(d.get("min_ratio", cls.min_ratio)), float(d.get("step", cls.step)),
                       int(d.get("round_to", cls.round_to)), tuple(frozen), tuple(items))
        except (TypeError, ValueError) as exc:
            raise SpaceError(f"{source}: {exc}") from None

    def to_dict(self) -> dict:
        return {"min_ratio": self.min_ratio, "step": self.step, "round_to": self.round_to,
                "frozen": list(self.frozen), "groups": {p: dict(o) for p, o in self.groups}}

    def for_group(self, name: str) -> tuple[float, float, int, bool]:
        """(min_ratio, step, round_to, frozen) for one group, overrides applied in file order."""
        r, s, q = self.min_ratio, self.step, self.round_to
        frozen = any(fnmatch.fnmatchcase(name, p) for p in self.frozen)
        for pattern, over in self.groups:
            if fnmatch.fnmatchcase(name, pattern):
                o = dict(over)
                try:
                    r, s, q = float(o.get("min_ratio", r)), float(o.get("step", s)), int(o.get("round_to", q))
                except (TypeError, ValueError) as exc:
                    raise SpaceError(f"search space: groups['{pattern}']: {exc}") from None
                frozen = bool(o.get("frozen", frozen))
        _check_grid(r, s, q, f"group '{name}'")
        return r, s, q, frozen


def _check_grid(min_ratio: float, step: float, round_to: int, where: str) -> None:
    if not 0 < min_ratio <= 1:
        raise SpaceError(f"{where}: min_ratio must be in (0, 1], got {min_ratio}")
    if not 0 < step <= 1:
        raise SpaceError(f"{where}: step must be in (0, 1], got {step}")
    check_count(round_to, f"{where}: round_to", error=SpaceError)


def allowed_widths(width: int, min_ratio: float, step: float, round_to: int, blocks: int = 1) -> tuple[int, ...]:
    """The grid of widths a group of original ``width`` may take (ascending, ends at ``width``).

    A group cut into ``blocks`` (by grouped convs) takes ``blocks`` times a width from the grid
    of one block, rounded so that the total is a multiple of ``round_to`` where it can be.
    """
    if blocks > 1:
        per_block = allowed_widths(width // blocks, min_ratio, step, round_to // math.gcd(round_to, blocks))
        return tuple(blocks * w for w in per_block)
    q = round_to if width >= 4 * round_to else 1
    n = int(math.floor((1 - min_ratio) / step + 1e-9))
    out = {width}
    for i in range(n + 1):
        w = math.ceil(round((min_ratio + i * step) * width, 6))
        w = max(q, int(math.ceil(w / q) * q))
        out.add(min(w, width))
    return tuple(sorted(out))


def search_space_resource(model_name: str):
    """The packaged YAML for ``model_name`` (``:`` spelled ``_``); it may not exist."""
    return SEARCH_SPACES / f"{model_name.replace(':', '_')}.yaml"


def load_space_config(model_name: str | None, path: str | Path | None = None) -> SpaceConfig:
    """``path``, else the packaged ``autoprune/search_spaces/<model>.yaml``, else defaults."""
    if path is None:
        if model_name is None:
            return SpaceConfig()
        resource = search_space_resource(model_name)
        if not resource.is_file():
            return SpaceConfig()
        source = f"autoprune/search_spaces/{resource.name}"
        reader = resource
    else:
        reader = Path(path)
        source = str(reader)
    try:
        data = yaml.safe_load(reader.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise SpaceError(f"search-space file {source}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"search-space file {source}: invalid YAML ({one_line(exc)})") from None
    return SpaceConfig.from_dict(data, source=f"search-space file {source}")


@dataclass(frozen=True)
class SearchSpace:
    """Free channel groups of a traced model and the widths each may take."""

    graph: ChannelGraph
    free: tuple[int, ...]
    choices: tuple[tuple[int, ...], ...]
    config: SpaceConfig = field(default_factory=SpaceConfig)

    @classmethod
    def from_graph(cls, graph: ChannelGraph, config: SpaceConfig | None = None) -> "SearchSpace":
        config = config or SpaceConfig()
        free, choices = [], []
        names = {g.name for g in graph.groups}
        for pattern in list(config.frozen) + [p for p, _ in config.groups]:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise SpaceError(f"search space: pattern '{pattern}' matches no channel group "
                                 f"(groups: {', '.join(sorted(names)[:8])}, ...)")
        for g in graph.groups:
            if g.fixed or g.follows is not None:
                continue
            r, s, q, frozen = config.for_group(g.name)
            if frozen:
                continue
            widths = allowed_widths(g.width, r, s, q, g.blocks)
            if len(widths) > 1:
                free.append(g.id)
                choices.append(widths)
        return cls(graph, tuple(free), tuple(choices), config)

    @classmethod
    def from_model(cls, model: nn.Module, input_shape: Sequence[int] = (3, 32, 32), *,
                   config: SpaceConfig | None = None, model_name: str | None = None,
                   space_file: str | Path | None = None, mode: str | None = None, **overrides) -> "SearchSpace":
        """Trace ``model`` (in ``mode``, ``"eval"`` or ``"train"``; None: the mode it is in; see
        :func:`~autoprune.graph.trace`) and build its space.

        The config is, in order of precedence: ``config``; else the per-model YAML for
        ``model_name`` or ``space_file``; with keyword ``overrides`` (``min_ratio``, ``step``,
        ``round_to``, ``frozen``) applied on top.
        """
        if config is None:
            config = load_space_config(model_name, space_file)
        if overrides:
            d = config.to_dict()
            d.update({k: v for k, v in overrides.items() if v is not None})
            config = SpaceConfig.from_dict(d, source="search space overrides")
        return cls.from_graph(trace(model, tuple(input_shape), mode), config)

    # -- views -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.free)

    @property
    def groups(self) -> tuple[ChannelGroup, ...]:
        return tuple(self.graph.groups[i] for i in self.free)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.graph.groups[i].name for i in self.free)

    def max_widths(self) -> tuple[int, ...]:
        return tuple(c[-1] for c in self.choices)

    def min_widths(self) -> tuple[int, ...]:
        return tuple(c[0] for c in self.choices)

    def size(self) -> float:
        """Number of width vectors in the space (a float: it is often astronomically large)."""
        return float(np.prod([float(len(c)) for c in self.choices]))

    def uniform(self, ratio: float) -> tuple[int, ...]:
        """Every group at the allowed width nearest to ``ratio`` × its original width.

        WidthError unless 0 < ``ratio`` ≤ 1 (a ratio outside would be clamped to the grid).
        """
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not 0 < ratio <= 1:
            raise WidthError(f"uniform ratio must be a number in (0, 1], got {ratio!r}")
        out = []
        for c in self.choices:
            target = ratio * c[-1]
            out.append(min(c, key=lambda w: (abs(w - target), w)))
        return tuple(out)

    def validate(self, widths: Sequence[int]) -> tuple[int, ...]:
        """``widths`` as a tuple of ints, or WidthError naming the first bad entry."""
        widths = tuple(widths)
        if len(widths) != len(self.free):
            raise WidthError(f"width vector has {len(widths)} entries; this space has {len(self.free)} free groups")
        out = []
        for name, w, c in zip(self.names, widths, self.choices):
            if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or int(w) not in c:
                raise WidthError(f"width {w!r} for group '{name}' is not allowed; allowed: {list(c)}")
            out.append(int(w))
        return tuple(out)

    def full_widths(self, widths: Sequence) -> list:
        """Width of every group by id: the free ones from ``widths``, those that follow another
        from their parent's, the others at original.

        ``widths`` may hold ints or (for DMCP) differentiable scalars.
        """
        full: list = [g.width for g in self.graph.groups]
        for gid, w in zip(self.free, widths):
            full[gid] = w
        return follow_widths(self.graph, full)

    # -- index and unit-cube encodings -----------------------------------------------------
    def index(self, widths: Sequence[int]) -> tuple[int, ...]:
        widths = self.validate(widths)
        return tuple(c.index(w) for c, w in zip(self.choices, widths))

    def from_index(self, idx: Sequence[int]) -> tuple[int, ...]:
        if len(idx) != len(self.choices):
            raise WidthError(f"index vector has {len(idx)} entries; this space has {len(self.choices)} free groups")
        return tuple(c[min(max(int(i), 0), len(c) - 1)] for c, i in zip(self.choices, idx))

    def encode(self, widths: Sequence[int]) -> np.ndarray:
        """A point in [0, 1]^d: the centre of the width's cell in its group's grid."""
        idx = np.asarray(self.index(widths), dtype=float)
        n = np.asarray([len(c) for c in self.choices], dtype=float)
        return (idx + 0.5) / n

    def decode(self, x: Sequence[float]) -> tuple[int, ...]:
        x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
        if x.shape != (len(self.choices),):
            raise WidthError(f"point has shape {x.shape}; this space has {len(self.choices)} free groups")
        n = np.asarray([len(c) for c in self.choices])
        return self.from_index(np.minimum(np.floor(x * n).astype(int), n - 1))

    def sample(self, rng: np.random.Generator) -> tuple[int, ...]:
        return tuple(int(c[rng.integers(len(c))]) for c in self.choices)

    # -- persistence -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "groups": [
                {"name": g.name, "width": g.width, "choices": list(c)}
                for g, c in zip(self.groups, self.choices)
            ],
        }

    @classmethod
    def from_dict(cls, d: dict, graph: ChannelGraph) -> "SearchSpace":
        """Rebuild a saved space on ``graph``; SpaceError if the model no longer matches."""
        space = cls.from_graph(graph, SpaceConfig.from_dict(d.get("config", {})))
        saved = [(g["name"], g["width"], tuple(g["choices"])) for g in d.get("groups", [])]
        mine = [(g.name, g.width, c) for g, c in zip(space.groups, space.choices)]
        if saved != mine:
            raise SpaceError("saved search space does not match the model's traced channel groups")
        return space
