"""The classic pruning criteria on one table: keep rules in the evaluator, and width producers.

For one trained base and each budget (its own width vectors):

(a) every keep rule (``l1``, ``bn_gamma``, ``random``, ``hrank``, ``activation``, ``apoz``,
    ``reconstruct``) scores the same width vectors with the evaluator (BN re-estimation and a
    short fine-tune from the inherited weights): mean proxy score, Kendall τ-b (and p) against
    the vectors' accuracy when trained from scratch (on the test split where there is one,
    never the validation split the evaluator scores on), the time to score the base once and the time
    per candidate;
(b) every one-shot producer (``uniform``, ``slimming``, ``l1-global``, ``hrank``,
    ``activation``, ``ssl``) proposes its widths at the budget, which are scored by the
    evaluator (``l1``) and trained from scratch for the same steps.

Full run (one GPU), as the criteria benchmark asks:

    python experiments/bench_criteria.py --model vgg16 --dataset cifar10 --data-dir DIR \
        --pretrain-epochs 30 --budgets 0.4 0.1 --vectors 12 --retrain-epochs 25

On a GPU, the same comparison for the proof run's VGG16 base (reusing its from-scratch retrains)
is part 3 of experiments/proof.py (``--part 3``).

The defaults are a scaled-down CPU run (resnet20 on 16x16 synthetic images) that takes a few
minutes on two cores. Writes OUT/bench.json after every budget and prints markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_stripe import test_subset  # noqa: E402

from autoprune import cost  # noqa: E402
from autoprune.api import file_sha1  # noqa: E402
from autoprune.budget import Limits, repair  # noqa: E402
from autoprune.checkpoint import save_checkpoint  # noqa: E402
from autoprune.data import load_data  # noqa: E402
from autoprune.evaluator import EvalConfig, Evaluator  # noqa: E402
from autoprune.files import write_json  # noqa: E402
from autoprune.keep import ScoreCache  # noqa: E402
from autoprune.models import create_model  # noqa: E402
from autoprune.optimizers import Context, get_optimizer  # noqa: E402
from autoprune.space import SearchSpace  # noqa: E402
from autoprune.surgery import materialise  # noqa: E402
from autoprune.train import TrainConfig, split_accuracy, train  # noqa: E402

# The keep rules compared (``first``, what a rebuild from scratch keeps, is no criterion).
KEEP_RULES = ("l1", "bn_gamma", "random", "hrank", "activation", "apoz", "reconstruct")
PRODUCERS = ("uniform", "slimming", "l1-global", "hrank", "activation", "ssl")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="training images (real datasets)")
    p.add_argument("--n-train", type=int, default=1024, help="training images (synthetic)")
    p.add_argument("--image-size", type=int, default=16, help="image size (synthetic)")
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--test-limit", type=int, default=None, help="a seeded subset of the test split (real datasets)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default torch's)")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.4], help="MACs budgets, each with its own vectors")
    p.add_argument("--vectors", type=int, default=8, help="width vectors scored by every keep rule")
    p.add_argument("--pretrain-epochs", type=int, default=4)
    p.add_argument("--retrain-epochs", type=int, default=2, help="from-scratch epochs of each vector")
    p.add_argument("--fine-tune-steps", type=int, default=10)
    p.add_argument("--bn-batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ssl-steps", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_criteria")
    return p.parse_args(argv)


def kendall(proxy, truth) -> tuple[float | None, float | None]:
    """Kendall's τ-b and its p-value; None where either side is constant (τ undefined)."""
    stat = kendalltau(proxy, truth)
    return (None, None) if np.isnan(stat.statistic) else (float(stat.statistic), float(stat.pvalue))


def truth_split(data) -> str:
    """The split from-scratch accuracy is read on: test where the dataset has one, so that it
    is never the validation split the evaluator scores on."""
    return "test" if data.num_examples("test") else "val"


def scratch_accuracy(base, space, widths, data, args) -> float:
    model = materialise(base, space, widths, fresh=True)
    torch.manual_seed(args.seed)
    config = TrainConfig(epochs=args.retrain_epochs, batch_size=args.batch_size, lr=0.05, seed=args.seed)
    train(model, data, config, device=args.device, progress=False)
    return float(split_accuracy(model, data, truth_split(data), device=args.device))


def keep_rule_rows(base, space, data, vectors, scratch, cache, args) -> list[dict]:
    rows = []
    for rule in KEEP_RULES:
        start = time.perf_counter()
        config = EvalConfig(keep=rule, bn_batches=args.bn_batches, fine_tune_steps=args.fine_tune_steps,
                            batch_size=args.batch_size, seed=args.seed)
        evaluator = Evaluator(base, space, data, config=config, device=args.device, cache=cache)
        setup = time.perf_counter() - start
        results = [evaluator(w) for w in vectors]
        proxy = [r.score for r in results]
        tau, pvalue = kendall(proxy, scratch)
        rows.append({"rule": rule, "proxy_mean": float(np.mean(proxy)), "tau": tau, "p": pvalue, "proxy": proxy,
                     "setup_s": setup, "per_candidate_s": float(np.mean([r.seconds for r in results]))})
        print(f"  keep {rule}: proxy {rows[-1]['proxy_mean']:.4f} tau {fmt(tau, '+.3f')} (p {fmt(pvalue, '.2f')})",
              flush=True)
    return rows


def producer_rows(base, space, data, max_macs, cache, args) -> list[dict]:
    rows = []
    evaluator = Evaluator(base, space, data, device=args.device,
                          config=EvalConfig(bn_batches=args.bn_batches, fine_tune_steps=args.fine_tune_steps,
                                            batch_size=args.batch_size, seed=args.seed))
    for name in PRODUCERS:
        options = {"steps": args.ssl_steps, "batch_size": args.batch_size} if name == "ssl" else {}
        start = time.perf_counter()
        opt = get_optimizer(name)(space, Limits(max_macs), seed=args.seed, **options)
        opt.prepare(Context(base=base, data=data, device=torch.device(args.device), cache=cache))
        widths, _ = opt.ask(np.random.default_rng(args.seed))
        seconds = time.perf_counter() - start
        rows.append({"method": name, "macs_ratio": cost.macs(space, widths) / cost.base_macs(space),
                     "proxy": evaluator(widths).score, "scratch": scratch_accuracy(base, space, widths, data, args),
                     "seconds": seconds, "widths": list(widths)})
        print(f"  producer {name}: proxy {rows[-1]['proxy']:.4f} scratch {rows[-1]['scratch']:.4f}", flush=True)
    return rows


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def load(args):
    if args.dataset == "synthetic":
        return load_data("synthetic", val_size=args.val_size, seed=args.seed, n_train=args.n_train,
                         image_size=args.image_size)
    data = load_data(args.dataset, args.data_dir, val_size=args.val_size, seed=args.seed, limit=args.limit)
    return test_subset(data, args.test_limit, args.seed)


def vectors_at(space, max_macs: int, args) -> list:
    """Uniform's widths, then random vectors repaired to the budget: ``args.vectors`` distinct ones."""
    rng = np.random.default_rng(args.seed)
    vectors = [get_optimizer("uniform")(space, Limits(max_macs)).ask(rng)[0]]
    while len(vectors) < args.vectors:
        w = repair(space, space.sample(rng), Limits(max_macs), rng=rng)
        if w not in vectors:
            vectors.append(w)
    return vectors


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    torch.manual_seed(args.seed)
    data = load(args)
    base = create_model(args.model, num_classes=data.num_classes)
    space = SearchSpace.from_model(base, data.input_shape)
    start = time.perf_counter()
    train(base, data, TrainConfig(epochs=args.pretrain_epochs, batch_size=args.batch_size, lr=0.05, seed=args.seed),
          device=args.device, progress=False)
    base_acc = float(split_accuracy(base, data, "val", device=args.device))
    ckpt = save_checkpoint(out / "base" / "model.pt", base, model_name=args.model)
    cache = ScoreCache.beside(ckpt, file_sha1(ckpt))
    print(f"base {args.model}: val {base_acc:.4f} in {time.perf_counter() - start:.0f} s", flush=True)
    result = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "host": platform.processor(),
              "threads": torch.get_num_threads(), "args": vars(args), "base_val": base_acc,
              "truth_split": truth_split(data), "budgets": []}
    for budget in args.budgets:  # each budget written when done: a time limit keeps what finished
        start = time.perf_counter()
        max_macs = int(budget * cost.base_macs(space))
        vectors = vectors_at(space, max_macs, args)
        scratch = [scratch_accuracy(base, space, w, data, args) for w in vectors]
        print(f"budget {budget}: scratch accuracies of {len(vectors)} vectors: {np.round(scratch, 3).tolist()}",
              flush=True)
        result["budgets"].append({
            "budget": budget, "scratch": scratch, "vectors": [list(w) for w in vectors],
            "keep_rules": keep_rule_rows(base, space, data, vectors, scratch, cache, args),
            "producers": producer_rows(base, space, data, max_macs, cache, args),
            "seconds": time.perf_counter() - start})
        write_json(result, out / "bench.json")
        print_tables(result["budgets"][-1])
    return result


def print_tables(r: dict) -> None:
    print(f"\nbudget {r['budget']}")
    print("\n| keep rule | mean proxy score | Kendall τ vs scratch (p) | scoring the base (s) | per candidate (s) |")
    print("|---|---|---|---|---|")
    for row in r["keep_rules"]:
        print(f"| `{row['rule']}` | {row['proxy_mean']:.4f} | {fmt(row['tau'], '+.3f')} ({fmt(row['p'], '.2f')}) | "
              f"{row['setup_s']:.1f} | {row['per_candidate_s']:.2f} |")
    print("\n| producer | MACs ratio | proxy score (l1) | from scratch | time to widths (s) |")
    print("|---|---|---|---|---|")
    for row in r["producers"]:
        print(f"| `{row['method']}` | {row['macs_ratio']:.3f} | {row['proxy']:.4f} | {row['scratch']:.4f} | "
              f"{row['seconds']:.1f} |")


if __name__ == "__main__":
    main()
