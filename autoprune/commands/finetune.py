"""``autoprune finetune``: fine-tune a searched architecture from the weights it inherits from its
base, optionally distilled from the base."""

from __future__ import annotations

import json
from pathlib import Path

from autoprune.commands._training import add_data_args, add_train_args, train_config
from autoprune.commands.common import add_task_args, data_or_task
from autoprune.finish import DEFAULT_TEMPERATURE, finetune


def register(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune an architecture JSON from its base's inherited weights "
                                        "(optionally distilled from the base)")
    p.add_argument("arch", metavar="ARCH.json", help="architecture file written by `autoprune search`")
    p.add_argument("--base", default=None,
                   help="the base the architecture was searched on: an autoprune checkpoint or any state dict file "
                        "(default: the one ARCH.json records, if unchanged)")
    p.add_argument("--pretrained", action="store_true",
                   help="tv: and timm: models: inherit from the library's pretrained weights instead of --base")
    p.add_argument("--distill", action="store_true",
                   help="add the KL divergence to the base's outputs (knowledge distillation) to the loss")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE,
                   help="with --distill: softmax temperature (default %(default)s)")
    p.add_argument("--distill-weight", type=float, default=1.0,
                   help="with --distill: weight of the divergence, times temperature squared (default %(default)s)")
    add_data_args(p, dataset_default=None)
    add_task_args(p)
    add_train_args(p, epochs=5)
    # Fine-tuning starts from trained weights: a small rate, no warm-up, a cosine down to zero.
    p.set_defaults(func=run, lr=0.01, schedule="cosine", warmup=0.0)


def run(args) -> int:
    out = Path(args.out) if args.out else Path(args.arch).resolve().parent / ("distill" if args.distill else "finetune")
    result = finetune(args.arch, args.base, data_or_task(args), pretrained=args.pretrained, distill=args.distill,
                      temperature=args.temperature, distill_weight=args.distill_weight,
                      config=train_config(args, args.epochs), out=out, device=args.device, resume=not args.no_resume,
                      progress=not args.quiet, seed=args.seed)
    if result.checkpoint is None:
        return 0  # under torchrun, rank 0 reports
    if args.json:
        print(json.dumps({**result.metrics, "checkpoint": str(result.checkpoint)}))
        return 0
    done = "distilled" if args.distill else "fine-tuned"
    if result.test_acc is None:  # a task's score
        print(f"{done}: {result.metrics['task']['name']} score {result.val_acc:.4f}  ({result.metrics['steps']} steps)")
    else:
        val = "n/a" if result.val_acc is None else f"{result.val_acc:.4f}"
        print(f"{done}: val acc {val}  test acc {result.test_acc:.4f}  ({result.metrics['steps']} steps)")
    resumable = [out / "checkpoint.pt"] if result.test_acc is not None else []  # a task's run does not resume
    print(f"wrote {', '.join(map(str, [result.checkpoint, *resumable, out / 'metrics.json']))}")
    return 0
