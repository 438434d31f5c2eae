"""``autoprune flops``: MACs and params of a model, or of a pruned architecture."""

from __future__ import annotations

import json

from autoprune.arch import arch_space, arch_stripes, frozen_line, frozen_records, load_arch
from autoprune.commands.common import add_model_args, model_and_space
from autoprune.cost import human, macs, params
from autoprune.errors import ArchError
from autoprune.stripe import stripe_macs, stripe_params


def register(sub) -> None:
    p = sub.add_parser("flops", help="MACs and parameters of a model or an architecture JSON")
    add_model_args(p)
    p.add_argument("--arch", default=None, help="architecture JSON to cost instead of the full model")
    p.add_argument("--groups", action="store_true",
                   help="also list the free channel groups and their allowed widths, and the frozen submodules")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    masks = {}
    if args.arch:
        arch = load_arch(args.arch)
        if arch["model"]["name"] != args.model:
            raise ArchError(f"{args.arch} is for model '{arch['model']['name']}', not '{args.model}'")
        model, space = arch_space(arch)
        widths = tuple(arch["widths"])
        masks = arch_stripes(arch, model, space)
    else:
        _, _, _, space = model_and_space(args)
        widths = space.max_widths()
    base_m, base_p = macs(space, space.max_widths()), params(space, space.max_widths())
    m, p = macs(space, widths), params(space, widths)
    if masks:  # a stripe-pruned architecture: kept stripes, filters with none removed
        m, p = stripe_macs(space.graph, masks), stripe_params(space.graph, masks)
    row = {"model": args.model, "input_shape": list(space.graph.input_shape), "macs": m, "flops": 2 * m,
           "params": p, "macs_ratio": m / base_m, "params_ratio": p / base_p, "free_groups": len(space)}
    row["frozen"] = frozen_records(space.graph)
    if args.groups:
        row["groups"] = [{"name": g.name, "width": g.width, "kept": w, "choices": list(c)}
                         for g, w, c in zip(space.groups, widths, space.choices)]
    if args.json:
        print(json.dumps(row))
        return 0
    shape = "x".join(map(str, space.graph.input_shape))
    print(f"model       {args.model} (input {shape})")
    print(f"MACs        {human(m)} ({m:,})" + (f"  {m / base_m:.1%} of base" if args.arch else ""))
    print(f"FLOPs       {human(2 * m)} (2 x MACs)")
    print(f"params      {human(p)} ({p:,})" + (f"  {p / base_p:.1%} of base" if args.arch else ""))
    print(f"free groups {len(space)}")
    leaves = [f for f in row["frozen"] if f["path"]]
    whole = next((f for f in row["frozen"] if not f["path"]), None)  # its own forward could not be traced
    if whole is not None:
        traced, _, rows = whole["reason"].rpartition("traced in parts: ")[2].partition("; ")
        print(f"traced      in parts: {traced}")
        if rows:  # a box head's MACs are those of the example's proposals
            print(f"per example {rows}")
    if leaves:
        print(f"frozen      {len(leaves)} submodule(s) traced as one step, channels fixed"
              + (":" if args.groups else " (--groups lists them)"))
    if args.groups:
        for f in row["frozen"]:
            print(f"  {frozen_line(f)}")
        name_w = max(len(g["name"]) for g in row["groups"]) if row["groups"] else 5
        for g in row["groups"]:
            c = g["choices"]
            print(f"  {g['name']:<{name_w}}  {g['kept']:>5}/{g['width']:<5} allowed {c[0]}..{c[-1]} ({len(c)} widths)")
    return 0
