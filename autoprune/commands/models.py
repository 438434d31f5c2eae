"""``autoprune models``: list the model names the registry understands."""

from __future__ import annotations

import json

from autoprune.models import default_input_size, list_models


def register(sub) -> None:
    p = sub.add_parser("models", help="list model names")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    names = list_models()
    if args.json:
        print(json.dumps([{"name": n, "input_size": default_input_size(n)} for n in names]))
        return 0
    for n in names:
        print(f"{n:<20} input {default_input_size(n)}x{default_input_size(n)}")
    print("also: any torchvision classifier as tv:NAME, any timm model as timm:NAME (pip install 'autoprune[timm]'), "
          "or a constructor as package.module:callable")
    return 0
