"""``autoprune methods``: the search methods the optimizer registry holds, and what each needs."""

from __future__ import annotations

import json

from autoprune.optimizers import method_table


def register(sub) -> None:
    p = sub.add_parser("methods", help="list search methods (--method of search)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.set_defaults(func=run)


def run(args) -> int:
    rows = method_table()
    if args.json:
        print(json.dumps(rows))
    elif args.markdown:
        print(markdown(rows))
    else:
        width = max(len(r["method"]) for r in rows)
        for r in rows:
            print(f"{r['method']:<{width}}  {r['summary']} [candidates: {r['candidates']}; needs: {r['needs']}]")
    return 0


def markdown(rows: list[dict]) -> str:
    """The method table as the README shows it."""
    lines = ["| method | what it does | candidates scored | the optimizer itself reads |", "|---|---|---|---|"]
    lines += [f"| `{r['method']}` | {r['summary']} | `{r['candidates']}` | {r['needs']} |" if r["candidates"] != "1"
              else f"| `{r['method']}` | {r['summary']} | 1 | {r['needs']} |" for r in rows]
    return "\n".join(lines)
