"""Architecture JSON (schema ``autoprune.arch/1``, or ``/2``): a pruned model described as data.

It holds everything needed to rebuild the pruned model with no search state at hand: the
model name and constructor kwargs, the input shape, the search-space config, every free
group (name, member layers, original and kept width), the width vector, MACs and params of
base and pruned model, and how it was found (budget, method, seed, score, version). A model
with submodules the tracer could not look into also lists them under ``frozen`` (path,
class, reason); they are rebuilt as they are, at full width.

Schema ``autoprune.arch/2`` adds ``stripes``: per conv, the stripe mask of a stripe-pruned
model (see :mod:`autoprune.stripe`), whose MACs and params then count kept stripes and the
removal of filters that keep none (derived from the masks, so ``widths`` stay full). Only
files with stripes are written as ``/2``, so channel-only files stay readable by a reader of
``/1``; this reader reads both.

>>> from autoprune.models import create_model
>>> from autoprune.space import SearchSpace
>>> space = SearchSpace.from_model(create_model("resnet20"), (3, 32, 32))
>>> arch = make_arch("resnet20", {"num_classes": 10}, space, space.uniform(0.5))
>>> build(arch).fc.in_features
32
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch.nn as nn

from autoprune.cost import macs, params
from autoprune.errors import ArchError, AutopruneError
from autoprune.files import write_json
from autoprune.keep import First
from autoprune.models import create_model
from autoprune.space import SearchSpace, SpaceConfig
from autoprune.stripe import decode_masks, encode_masks, export_stripes, stripe_layers, stripe_macs, stripe_params
from autoprune.surgery import materialise
from autoprune.version import __version__

SCHEMA = "autoprune.arch/1"
SCHEMA_STRIPES = "autoprune.arch/2"
SCHEMAS = (SCHEMA, SCHEMA_STRIPES)
_REQUIRED = {
    "schema": str, "model": dict, "input_shape": list, "num_classes": (int, type(None)), "space": dict,
    "groups": list, "widths": list, "macs": dict, "params": dict, "version": str,
}


def frozen_records(graph) -> list[dict]:
    """What ``arch.json`` and ``flops --json`` record of the graph's frozen submodules."""
    return [{"path": f.path, "class": f.kind, "reason": f.reason} for f in graph.frozen]


def frozen_line(f: dict) -> str:
    """One frozen record as a line; the empty path is the model's own forward (traced in parts)."""
    return f"{f['path'] or 'forward'} ({f['class']}): {f['reason']}"


def make_arch(model_name: str, model_kwargs: dict, space: SearchSpace, widths: Sequence[int], *,
              budget: dict | None = None, method: str | None = None, seed: int | None = None,
              score: float | None = None, extra: dict | None = None, stripes: dict | None = None) -> dict:
    """The architecture dict for ``widths`` in ``space``; with ``stripes`` (layer name ->
    stripe mask, at full widths), a stripe-pruned model in schema ``autoprune.arch/2``."""
    widths = space.validate(widths)
    full = space.max_widths()
    if stripes is not None and tuple(widths) != tuple(full):
        raise ArchError("a stripe-pruned architecture keeps every channel: give the full widths with 'stripes'")
    arch = {
        "schema": SCHEMA if stripes is None else SCHEMA_STRIPES,
        "model": {"name": model_name, "kwargs": dict(model_kwargs), "mode": space.graph.mode},
        "input_shape": list(space.graph.input_shape),
        "num_classes": model_kwargs.get("num_classes"),
        "space": space.config.to_dict(),
        "groups": [
            {"name": g.name, "members": list(g.members), "width": g.width, "kept": w, "choices": list(c)}
            for g, w, c in zip(space.groups, widths, space.choices)
        ],
        "widths": list(widths),
        "macs": {"base": int(macs(space, full)), "pruned": int(macs(space, widths))},
        "params": {"base": int(params(space, full)), "pruned": int(params(space, widths))},
        "budget": budget,
        "method": method,
        "seed": seed,
        "score": score,
        "version": __version__,
    }
    if space.graph.frozen:  # submodules the tracer could not look into, kept as they are
        arch["frozen"] = frozen_records(space.graph)
    if stripes is not None:
        arch["stripes"] = encode_masks(stripes)
        arch["macs"]["pruned"] = stripe_macs(space.graph, stripes)
        arch["params"]["pruned"] = stripe_params(space.graph, stripes)
    if extra:
        arch.update(extra)
    return arch


def save_arch(arch: dict, path: str | Path) -> Path:
    """Write atomically: a crash never leaves a half-written file at ``path``."""
    return write_json(arch, path)


def validate_arch(arch: Any, source: str = "architecture") -> dict:
    """Check the schema and field types; ArchError naming the bad field."""
    if not isinstance(arch, dict):
        raise ArchError(f"{source}: expected a JSON object, got {type(arch).__name__}")
    schema = arch.get("schema")
    if schema not in SCHEMAS:
        raise ArchError(f"{source}: field 'schema' is {schema!r}; this autoprune reads {' and '.join(map(repr, SCHEMAS))}")
    if (schema == SCHEMA_STRIPES) != ("stripes" in arch):
        raise ArchError(f"{source}: schema {schema!r} and field 'stripes' go together")
    for key, kind in _REQUIRED.items():
        if key not in arch:
            raise ArchError(f"{source}: missing field '{key}'")
        if not isinstance(arch[key], kind):
            raise ArchError(f"{source}: field '{key}' has type {type(arch[key]).__name__}")
    if not isinstance(arch["model"].get("name"), str) or not isinstance(arch["model"].get("kwargs", {}), dict):
        raise ArchError(f"{source}: field 'model' needs a string 'name' and a 'kwargs' object")
    if not all(_positive_int(w) for w in arch["widths"]):
        raise ArchError(f"{source}: field 'widths' must be a list of positive integers")
    if len(arch["groups"]) != len(arch["widths"]):
        raise ArchError(f"{source}: field 'groups' has {len(arch['groups'])} entries but 'widths' has "
                        f"{len(arch['widths'])}")
    for i, g in enumerate(arch["groups"]):
        if not isinstance(g, dict) or not {"name", "width", "kept"} <= set(g):
            raise ArchError(f"{source}: groups[{i}] needs 'name', 'width' and 'kept'")
        if not (_positive_int(g["width"]) and _positive_int(g["kept"])):
            raise ArchError(f"{source}: groups[{i}].width and .kept must be positive integers, got "
                            f"{g['width']!r} and {g['kept']!r}")
        if g["kept"] != arch["widths"][i]:
            raise ArchError(f"{source}: groups[{i}].kept ({g['kept']}) disagrees with widths[{i}] "
                            f"({arch['widths'][i]})")
    for key in ("macs", "params"):
        if not {"base", "pruned"} <= set(arch[key]):
            raise ArchError(f"{source}: field '{key}' needs 'base' and 'pruned'")
        if not (_positive_int(arch[key]["base"]) and _positive_int(arch[key]["pruned"])):
            raise ArchError(f"{source}: field '{key}' needs positive integer 'base' and 'pruned', got "
                            f"{arch[key]['base']!r} and {arch[key]['pruned']!r}")
    return arch


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def load_arch(path: str | Path) -> dict:
    """Read and validate an architecture JSON file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ArchError(f"cannot read architecture file {path}: {exc.strerror}") from None
    try:
        arch = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArchError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return validate_arch(arch, str(path))


def arch_space(arch: dict, model: nn.Module | None = None) -> tuple[nn.Module, SearchSpace]:
    """The unpruned model and the search space an architecture was found in.

    ``model`` is needed when the architecture was searched on a user nn.Module that the
    registry cannot rebuild by name. ArchError if the space no longer matches ``arch``.
    """
    arch = validate_arch(arch)
    if model is None:
        try:
            model = create_model(arch["model"]["name"], **arch["model"].get("kwargs", {}))
        except AutopruneError as exc:
            raise ArchError(f"architecture field 'model': {exc}") from None
    try:
        config = SpaceConfig.from_dict(arch["space"], source="architecture field 'space'")
        space = SearchSpace.from_model(model, tuple(arch["input_shape"]), config=config,
                                       mode=arch["model"].get("mode"))
    except AutopruneError as exc:
        raise ArchError(f"architecture does not fit model '{arch['model']['name']}': {exc}") from None
    names = [g["name"] for g in arch["groups"]]
    if list(space.names) != names:
        raise ArchError(f"architecture is for another model: its groups {names[:3]}... do not match "
                        f"'{arch['model']['name']}' ({list(space.names)[:3]}...)")
    widths = tuple(arch["widths"])
    for name, w, c in zip(space.names, widths, space.choices):
        if w not in c:
            raise ArchError(f"architecture field 'widths': {w} for group '{name}' is not allowed; allowed: {list(c)}")
    if "stripes" in arch:
        arch_stripes(arch, model, space)
    return model, space


def arch_stripes(arch: dict, model: nn.Module, space: SearchSpace) -> dict:
    """The stripe masks of ``arch`` (empty for a channel-only one), checked against the model."""
    if "stripes" not in arch:
        return {}
    masks = decode_masks(arch["stripes"], "architecture field 'stripes'")
    shapes = stripe_layers(model, space.graph).shapes
    for name, mask in masks.items():
        if shapes.get(name) != tuple(mask.shape):
            raise ArchError(f"architecture field 'stripes': layer '{name}' with mask shape {list(mask.shape)} is not "
                            f"a stripe-prunable conv of '{arch['model']['name']}'")
    if tuple(arch["widths"]) != tuple(space.max_widths()):
        raise ArchError("architecture field 'widths': a stripe-pruned architecture keeps every channel")
    return masks


def build(arch: dict, model: nn.Module | None = None) -> nn.Module:
    """The pruned model of ``arch``, freshly initialised, ready to train from scratch.

    Built from the registry, it keeps the first channels of a newly constructed model, so
    the constructor's own initialisation applies; a given ``model`` (which may be trained)
    is re-initialised with each module's ``reset_parameters``.
    """
    given = model is not None
    model, space = arch_space(arch, model)
    if "stripes" in arch:
        if given:
            model = materialise(model, space, arch["widths"], fresh=True)
        return export_stripes(model, space.graph, arch_stripes(arch, model, space), fresh=given)
    return materialise(model, space, arch["widths"], keep=First(), fresh=given)
