"""``autoprune search``: find per-group widths under a MACs budget; writes OUT/arch.json."""

from __future__ import annotations

import json

from autoprune.commands.common import add_model_args
from autoprune.search.base import EXTERNAL, list_optimizers


def register(sub) -> None:
    p = sub.add_parser("search", help="search per-layer widths under a MACs budget (writes OUT/arch.json)")
    add_model_args(p)
    p.add_argument("--budget", required=True,
                   help="ratio of the base MACs in (0, 1] (0.4, 40%%) or absolute MACs (120M, 1.2G, 3e8)")
    p.add_argument("--method", default="abc", choices=list_optimizers() + list(EXTERNAL), help="optimizer (default abc)")
    p.add_argument("--dataset", default=None,
                   help="dataset name or ImageFolder path/.tar.gz (default: the --base checkpoint's, else cifar10)")
    p.add_argument("--data-dir", default=None, help="where the dataset lives")
    p.add_argument("--limit", type=int, default=None, help="use only this many training images")
    p.add_argument("--val-size", type=int, default=None,
                   help="validation images held out of the training split (default: the base's split)")
    p.add_argument("--base", default=None, help="checkpoint of the trained base model (else one is pre-trained into OUT/base)")
    p.add_argument("--pretrain-epochs", type=int, default=10, help="epochs to pre-train a base when no --base (default 10)")
    p.add_argument("--trials", type=int, default=None,
                   help="candidates to score in the study (default 50; failed ones are retried on a rerun)")
    p.add_argument("--storage", default=None, help="Optuna storage URL or journal:PATH (default sqlite:///OUT/study.db)")
    p.add_argument("--study", default=None, help="study name (default MODEL-METHOD-BUDGET-seedS)")
    p.add_argument("--out", default="runs/search", help="output folder (default runs/search)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--fine-tune-steps", type=int, default=None, help="SGD steps per candidate (GPU 100, CPU 20)")
    p.add_argument("--bn-batches", type=int, default=None, help="batches to re-estimate BatchNorm (GPU 40, CPU 8)")
    p.add_argument("--eval-batch-size", type=int, default=None, help="batch size of BN re-estimation and fine-tuning")
    p.add_argument("--keep", default="l1", choices=["l1", "bn_gamma", "random"], help="which channels a pruned layer inherits")
    p.add_argument("--objective", default=None, choices=["synthetic"],
                   help="score with a cheap synthetic objective instead of training (for testing the machinery)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from autoprune.api import search

    space_options = {"space_file": args.space, "round_to": args.round_to, "min_ratio": args.min_ratio}
    result = search(args.model, args.budget, args.method, args.dataset, trials=args.trials, base=args.base,
                    storage=args.storage, study=args.study, out=args.out, seed=args.seed, device=args.device,
                    input_size=args.input_size, num_classes=args.num_classes, in_channels=args.in_channels,
                    data_dir=args.data_dir, keep=args.keep, limit=args.limit, val_size=args.val_size,
                    fine_tune_steps=args.fine_tune_steps, bn_batches=args.bn_batches,
                    eval_batch_size=args.eval_batch_size, pretrain_epochs=args.pretrain_epochs,
                    objective=args.objective, space_options={k: v for k, v in space_options.items() if v is not None},
                    progress=not (args.json or args.no_progress))
    if args.json:
        print(json.dumps(result.summary()))
    else:
        print(result)
    return 0
