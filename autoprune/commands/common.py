"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

from autoprune.checkpoint import load_weights
from autoprune.dataspec import DataSpec
from autoprune.errors import AutopruneError, SearchError
from autoprune.files import atomic_write
from autoprune.models import create_model, create_pretrained, default_input_size, merge_kwargs, model_kwargs, parse_model_args
from autoprune.runtime import log
from autoprune.space import SearchSpace
from autoprune.task import load_task


def add_model_args(p) -> None:
    """--model, --input-size, --num-classes, --in-channels and the search-space options, added to ``p``:
    a parser or one of its argument groups."""
    p.add_argument("--model", required=True, help="registry name, tv:NAME, timm:NAME or package.module:callable")
    p.add_argument("--input-size", type=int, default=None, help="input height/width (default: 32 zoo, 224 tv: and timm:)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: 10 zoo, 1000 tv: and timm:)")
    p.add_argument("--in-channels", type=int, default=None, help="input channels (default 3)")
    p.add_argument("--mode", choices=("eval", "train"), default="eval",
                   help="trace the model's eval forward, the deployed one (default), or its train forward; "
                        "channels a train-only branch reads stay whole either way")
    p.add_argument("--space", default=None, metavar="YAML", help="search-space overrides file")
    p.add_argument("--round-to", type=int, default=None, help="widths rounded to a multiple of this (default 8)")
    p.add_argument("--min-ratio", type=float, default=None, help="smallest width as a ratio (default 0.1)")
    add_weights_args(p)
    add_model_arg_option(p)


def add_model_arg_option(p) -> None:
    """--model-arg KEY=VALUE, repeatable: constructor arguments, recorded in the checkpoint and arch.json."""
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", dest="model_args",
                   help="constructor argument, repeatable; VALUE is read as JSON where it parses (3, true, null, "
                        "[1,2]), else as a string (cfg=yolov8n.yaml)")


def model_args(args) -> dict:
    """The constructor kwargs of the --model-arg options (empty where the command has none)."""
    return parse_model_args(getattr(args, "model_args", None))


def model_and_space(args):
    """(model name, constructor kwargs, model, space) from the parsed model arguments."""
    kwargs = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if getattr(args, "in_channels", None) is not None:
        kwargs["in_channels"] = args.in_channels
    kwargs = model_kwargs(args.model, **merge_kwargs(kwargs, model_args(args)))
    model = model_with_weights(args, args.model, kwargs)
    size = args.input_size or default_input_size(args.model)
    channels = kwargs.get("in_channels", 3)
    space = SearchSpace.from_model(model, (channels, size, size), model_name=args.model, space_file=args.space,
                                   round_to=args.round_to, min_ratio=args.min_ratio, mode=getattr(args, "mode", "eval"))
    return args.model, kwargs, model, space


def add_weights_args(p) -> None:
    """--pretrained and --weights: the weights a built model starts from (random without them)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--pretrained", action="store_true",
                   help="tv: and timm: models: the library's pretrained weights, from its cache (downloaded there "
                        "when missing, unless AUTOPRUNE_OFFLINE is set)")
    g.add_argument("--weights", default=None, metavar="FILE",
                   help="weights file: a state dict or another tool's checkpoint (state_dict, model, "
                        "model_state_dict; DDP's module. prefix is removed)")


def model_with_weights(args, name: str, kwargs: dict):
    """Model ``name`` built with ``kwargs``, with the weights --pretrained or --weights ask for
    (a note on stderr when a pretrained classifier is re-initialised for another --num-classes)."""
    if getattr(args, "pretrained", False):
        pretrained = create_pretrained(name, **kwargs)
        if pretrained.note:
            log(f"autoprune: note: {pretrained.note}")
        return pretrained.model
    model = create_model(name, **kwargs)
    if getattr(args, "weights", None):
        load_weights(model, args.weights)
    return model


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend; AutopruneError naming the extra when
    matplotlib is missing."""
    try:  # deferred on purpose: matplotlib is an optional extra, needed for --plot only
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AutopruneError("--plot needs matplotlib: pip install 'autoprune[plot]'") from None
    return plt


def save_figure(plt, fig, path: str) -> None:
    """Write ``fig`` as a PNG atomically (never a half-written file) and close it."""
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    finally:
        plt.close(fig)


def add_task_args(p) -> None:
    """--task MODULE:CALLABLE and --task-arg KEY=VALUE: the user's task in place of a dataset."""
    p.add_argument("--task", default=None, metavar="MODULE:CALLABLE",
                   help="your own task instead of a classification dataset: a package.module:callable returning "
                        "an autoprune.Task (its data, loss and score)")
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE", dest="task_args",
                   help="argument of the task's callable, repeatable; VALUE read as JSON where it parses")


def data_or_task(args):
    """The task ``--task`` names (it brings its own data, so no data option goes with it), else
    the data options as a DataSpec."""
    data = DataSpec(name=args.dataset, data_dir=args.data_dir, limit=args.limit, val_size=args.val_size,
                    seed=args.seed)
    if args.task is None:
        if args.task_args:
            raise SearchError("--task-arg goes with --task")
        return data
    given = [f"--{k.replace('_', '-')}" for k in ("dataset", "data_dir", "limit", "val_size")
             if getattr(args, k) is not None]
    if given:
        raise SearchError(f"--task brings its own data: drop {', '.join(given)}")
    return load_task(args.task, **parse_model_args(args.task_args))
