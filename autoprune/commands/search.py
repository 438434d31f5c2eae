"""``autoprune search``: find per-group widths under a MACs budget; writes OUT/arch.json."""

from __future__ import annotations

import json

from autoprune.api import (
    DEFAULT_OUT,
    DEFAULT_PRETRAIN_EPOCHS,
    DEFAULT_TRIALS,
    BaseConfig,
    LatencyConfig,
    MethodConfig,
    ModelConfig,
    SpaceOptions,
    StudyConfig,
    search,
)
from autoprune.commands.common import add_model_args, add_task_args, data_or_task, model_args
from autoprune.commands.latency_table import add_table_args
from autoprune.errors import BudgetError, SearchError
from autoprune.evaluator import EvalConfig
from autoprune.keep import list_keep_rules
from autoprune.optimizers import list_methods
from autoprune.profile import TableConfig, set_threads
from autoprune.study import DEFAULT_HEARTBEAT_TIMEOUT

# The option groups of `search --help`, in order: (title, what the group's options set).
GROUPS = (
    ("model", "the network to prune, its search space, and the trained base candidates inherit from"),
    ("budget", "the MACs limit every candidate is held to"),
    ("latency", "a latency limit, held against a latency table measured on --device"),
    ("data", "the images candidates are fine-tuned and scored on"),
    ("study", "the optimizer and the Optuna study its candidates are recorded in"),
    ("evaluator", "how each candidate is scored"),
    ("stripe", "options of --method stripe"),
    ("output", "what is written and printed"),
)


def register(sub) -> None:
    p = sub.add_parser("search", help="search per-layer widths under a MACs budget (writes OUT/arch.json)")
    g = {name: p.add_argument_group(name, text) for name, text in GROUPS}
    add_model_args(g["model"])
    g["model"].add_argument("--base", default=None,
                            help="checkpoint of the trained base model (else --pretrained or --weights FILE, else one is "
                                 "pre-trained into OUT/base)")
    g["model"].add_argument("--pretrain-epochs", type=int, default=DEFAULT_PRETRAIN_EPOCHS,
                            help="epochs to pre-train a base when no --base (default 10)")
    g["budget"].add_argument("--budget", default=None,
                             help="ratio of the base MACs in (0, 1] (0.4, 40%%) or absolute MACs (120M, 1.2G, 3e8)")
    g["latency"].add_argument("--latency-budget", default=None,
                              help="ratio of the base model's latency measured on --device (0.5, 50%%) or a time "
                                   "(3.2ms); held against the latency table, alone or with --budget")
    add_table_args(g["latency"], "latency-")
    add_data_args(g["data"])
    add_study_args(g["study"])
    add_evaluator_args(g["evaluator"])
    add_stripe_args(g["stripe"])
    g["output"].add_argument("--out", default=DEFAULT_OUT, help="output folder (default %(default)s)")
    g["output"].add_argument("--json", action="store_true", help="print the summary as JSON")
    g["output"].add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def add_data_args(g) -> None:
    g.add_argument("--dataset", default=None,
                   help="dataset name or ImageFolder path/.tar.gz (default: the --base checkpoint's, else cifar10)")
    g.add_argument("--data-dir", default=None, help="where the dataset lives")
    g.add_argument("--limit", type=int, default=None, help="use only this many training images")
    g.add_argument("--val-size", type=int, default=None,
                   help="validation images held out of the training split (default: the base's split)")
    add_task_args(g)


def add_study_args(g) -> None:
    g.add_argument("--method", default="abc", choices=list_methods(),
                   help="optimizer (default abc; `autoprune methods` describes each)")
    # Counts are checked by the library (one message for the API and the CLI), not by argparse.
    g.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                   help="candidates to score in the study (default %(default)s; failed ones are retried on a rerun)")
    g.add_argument("--storage", default=None, help="Optuna storage URL or journal:PATH (default sqlite:///OUT/study.db)")
    g.add_argument("--heartbeat-timeout", type=float, default=DEFAULT_HEARTBEAT_TIMEOUT, metavar="S",
                   help="re-queue a claim whose worker sent no heartbeat for S seconds (a killed worker or "
                        "a lost host; default %(default)s)")
    g.add_argument("--study", default=None, help="study name (default MODEL-METHOD-BUDGET-seedS)")
    g.add_argument("--seed", type=int, default=0, help="seeds the optimizer, the validation split and the evaluator")


def add_evaluator_args(g) -> None:
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--fine-tune-steps", type=int, default=None, help="SGD steps per candidate (GPU 100, CPU 20)")
    g.add_argument("--bn-batches", type=int, default=None, help="batches to re-estimate BatchNorm (GPU 40, CPU 8)")
    g.add_argument("--eval-batch-size", type=int, default=None, help="batch size of BN re-estimation and fine-tuning")
    # Checked by the library (one message for the API and the CLI), like the counts.
    g.add_argument("--keep", default="l1", metavar="RULE",
                   help=f"keep rule: which channels a pruned layer inherits ({', '.join(list_keep_rules())}; default l1)")
    g.add_argument("--objective", default=None, choices=["synthetic"],
                   help="score with a cheap synthetic objective instead of training (for testing the machinery)")


def add_stripe_args(g) -> None:
    g.add_argument("--stripe-penalty", type=float, default=None,
                   help="strength of the L1 penalty on the Filter Skeleton (default 1e-5)")
    g.add_argument("--stripe-threshold", type=float, default=None,
                   help="stripes with |FS| at or below it are pruned whatever the budget (default 0.01)")
    g.add_argument("--stripe-epochs", type=int, default=None,
                   help="epochs of skeleton training from the base (default 1)")


def run(args) -> int:
    stripe = {"penalty": args.stripe_penalty, "threshold": args.stripe_threshold, "epochs": args.stripe_epochs}
    stripe = {k: v for k, v in stripe.items() if v is not None}
    if stripe and args.method != "stripe":
        raise SearchError("--stripe-penalty, --stripe-threshold and --stripe-epochs are options of --method stripe")
    if args.budget is None and args.latency_budget is None:
        raise BudgetError("give a MACs budget (--budget 0.4), a latency budget (--latency-budget 0.5), or both")
    set_threads(args.latency_threads)
    table = TableConfig(device=args.device, batch_size=args.latency_batch_size, dtype=args.latency_dtype,
                        channels_last=args.latency_channels_last, grid=args.latency_grid,
                        repeats=args.latency_repeats, statistic=args.latency_statistic, rounds=args.latency_rounds,
                        cache_dir=args.latency_cache_dir)
    model = ModelConfig(args.model, model_args(args), input_size=args.input_size, num_classes=args.num_classes,
                        in_channels=args.in_channels,
                        space=SpaceOptions(file=args.space, round_to=args.round_to, min_ratio=args.min_ratio,
                                          mode=getattr(args, "mode", None)))
    evaluator = EvalConfig(bn_batches=args.bn_batches, fine_tune_steps=args.fine_tune_steps,
                           batch_size=args.eval_batch_size, keep=args.keep, seed=args.seed)
    result = search(
        model, args.budget, MethodConfig(args.method, stripe), data_or_task(args),
        latency=None if args.latency_budget is None else LatencyConfig(args.latency_budget, table),
        base=BaseConfig(args.base, args.pretrain_epochs, pretrained=args.pretrained, weights=args.weights),
        out=args.out, seed=args.seed, device=args.device,
        study=StudyConfig(trials=args.trials, storage=args.storage, name=args.study,
                          heartbeat_timeout=args.heartbeat_timeout),
        objective=args.objective or evaluator, progress=not (args.json or args.no_progress))
    print(json.dumps(result.summary()) if args.json else result)
    return 0
