"""A digest of what the tracer makes of every model of the coverage sweep: the groups, layers,
rewrites and frozen leaves of each trace, and its MACs at full width and at uniform(0.5).

Two runs agree model by model exactly when the tracer gives the same result, so a change to
the tracer that should not change behaviour is checked by a digest before and after:

    python experiments/trace_digest.py --out before.json
    ... change the tracer ...
    python experiments/trace_digest.py --out after.json --compare before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coverage import MIN_SIZE, models  # noqa: E402

from autoprune.cost import macs  # noqa: E402
from autoprune.models import create_model  # noqa: E402
from autoprune.space import SearchSpace  # noqa: E402


def digest(name: str, size: int, train: bool = False) -> dict:
    """The trace of one model, as hashes of its parts and its MACs; ``error`` where it fails."""
    torch.manual_seed(0)
    model = create_model(name).train(train)
    size = max(size, MIN_SIZE.get(name, 0))
    try:
        space = SearchSpace.from_model(model, (3, size, size))
    except Exception as exc:  # the row says why; a digest of the error message compares too
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    g = space.graph
    parts = {"groups": g.groups, "layers": g.layers, "rewrites": g.rewrites,
             "frozen": tuple((f.path, f.kind, f.macs) for f in g.frozen), "other": (g.other_params, g.other_macs)}
    row = {k: hashlib.sha1(repr(v).encode()).hexdigest()[:12] for k, v in parts.items()}
    row.update(free=len(space), macs=macs(space, space.max_widths()), half=macs(space, space.uniform(0.5)))
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--compare", help="an earlier digest: print every model that differs")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--train", action="store_true", help="trace in training mode")
    p.add_argument("--models", nargs="*", help="default: every torchvision CNN and the timm list")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = {}
    for name in args.models or models(True, True):
        rows[name] = digest(name, args.size, args.train)
        print(name, json.dumps(rows[name]), file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1, sort_keys=True))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        diff = [n for n in sorted(set(before) | set(rows)) if before.get(n) != rows.get(n)]
        for n in diff:
            print(f"{n}: {before.get(n)} -> {rows.get(n)}")
        print(f"{len(rows) - len(diff)} of {len(rows)} models trace as before")
        sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
