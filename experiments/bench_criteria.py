"""The classic pruning criteria on one table: keep rules in the evaluator, and width producers.

For one trained base and one budget:

(a) every keep rule (``l1``, ``bn_gamma``, ``random``, ``hrank``, ``activation``, ``apoz``,
    ``reconstruct``) scores the same width vectors with the evaluator (BN re-estimation and a
    short fine-tune from the inherited weights): mean proxy score, Kendall τ against the
    vectors' accuracy when trained from scratch, the time to score the base once and the time
    per candidate;
(b) every one-shot producer (``uniform``, ``slimming``, ``l1-global``, ``hrank``,
    ``activation``, ``ssl``) proposes its widths at the budget, which are scored by the
    evaluator (``l1``) and trained from scratch for the same steps.

Full run (one GPU), as the criteria benchmark asks:

    python experiments/bench_criteria.py --model vgg16 --dataset cifar10 --data-dir DIR \
        --pretrain-epochs 30 --budget 0.4 --vectors 12 --retrain-epochs 25

On a GPU, the same comparison for the proof run's VGG16 base (reusing its from-scratch retrains)
is part 3 of experiments/proof.py (``--part 3``).

The defaults are a scaled-down CPU run (resnet20 on 16x16 synthetic images) that takes a few
minutes on two cores. Writes OUT/bench.json and prints markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoprune import cost  # noqa: E402
from autoprune.api import file_sha1  # noqa: E402
from autoprune.budget import repair  # noqa: E402
from autoprune.checkpoint import save_checkpoint  # noqa: E402
from autoprune.criteria import ScoreCache  # noqa: E402
from autoprune.data import load_data  # noqa: E402
from autoprune.evaluator import EvalConfig, Evaluator  # noqa: E402
from autoprune.importance import KEEP_RULES  # noqa: E402
from autoprune.models import create_model  # noqa: E402
from autoprune.optimizers import Context, get_optimizer  # noqa: E402
from autoprune.space import SearchSpace  # noqa: E402
from autoprune.surgery import materialise  # noqa: E402
from autoprune.train import TrainConfig, split_accuracy, train  # noqa: E402

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
    p.add_argument("--budget", type=float, default=0.4)
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


def kendall_tau(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    i, j = np.triu_indices(len(a), 1)
    s = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
    return float(s.sum() / max(len(s), 1))


def scratch_accuracy(base, space, widths, data, args) -> float:
    model = materialise(base, space, widths, keep="first", fresh=True)
    torch.manual_seed(args.seed)
    config = TrainConfig(epochs=args.retrain_epochs, batch_size=args.batch_size, lr=0.05, seed=args.seed)
    train(model, data, config, device=args.device, progress=False)
    return float(split_accuracy(model, data, "val", device=args.device))


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
        rows.append({"rule": rule, "proxy_mean": float(np.mean(proxy)), "tau": kendall_tau(proxy, scratch),
                     "setup_s": setup, "per_candidate_s": float(np.mean([r.seconds for r in results]))})
        print(f"  keep {rule}: proxy {rows[-1]['proxy_mean']:.4f} tau {rows[-1]['tau']:+.3f}", flush=True)
    return rows


def producer_rows(base, space, data, max_macs, cache, args) -> list[dict]:
    rows = []
    evaluator = Evaluator(base, space, data, device=args.device,
                          config=EvalConfig(bn_batches=args.bn_batches, fine_tune_steps=args.fine_tune_steps,
                                            batch_size=args.batch_size, seed=args.seed))
    for name in PRODUCERS:
        options = {"steps": args.ssl_steps, "batch_size": args.batch_size} if name == "ssl" else {}
        start = time.perf_counter()
        opt = get_optimizer(name)(space, max_macs, seed=args.seed, **options)
        opt.prepare(Context(base=base, data=data, device=torch.device(args.device), cache=cache))
        widths, _ = opt.ask(np.random.default_rng(args.seed))
        seconds = time.perf_counter() - start
        rows.append({"method": name, "macs_ratio": cost.macs(space, widths) / cost.base_macs(space),
                     "proxy": evaluator(widths).score, "scratch": scratch_accuracy(base, space, widths, data, args),
                     "seconds": seconds, "widths": list(widths)})
        print(f"  producer {name}: proxy {rows[-1]['proxy']:.4f} scratch {rows[-1]['scratch']:.4f}", flush=True)
    return rows


def load(args):
    if args.dataset == "synthetic":
        return load_data("synthetic", val_size=args.val_size, seed=args.seed, n_train=args.n_train,
                         image_size=args.image_size)
    return load_data(args.dataset, args.data_dir, val_size=args.val_size, seed=args.seed, limit=args.limit)


def main(argv=None) -> dict:
    args = parse_args(argv)
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
    max_macs = int(args.budget * cost.base_macs(space))
    rng = np.random.default_rng(args.seed)
    vectors = [get_optimizer("uniform")(space, max_macs).ask(rng)[0]]
    while len(vectors) < args.vectors:
        w = repair(space, space.sample(rng), max_macs, rng=rng)
        if w not in vectors:
            vectors.append(w)
    scratch = [scratch_accuracy(base, space, w, data, args) for w in vectors]
    print(f"scratch accuracies of {len(vectors)} vectors: {np.round(scratch, 3).tolist()}", flush=True)
    result = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "host": platform.processor(),
              "threads": torch.get_num_threads(), "args": vars(args), "base_val": base_acc, "scratch": scratch,
              "keep_rules": keep_rule_rows(base, space, data, vectors, scratch, cache, args),
              "producers": producer_rows(base, space, data, max_macs, cache, args)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    print_tables(result)
    return result


def print_tables(r: dict) -> None:
    print("\n| keep rule | mean proxy score | Kendall τ vs scratch | scoring the base (s) | per candidate (s) |")
    print("|---|---|---|---|---|")
    for row in r["keep_rules"]:
        print(f"| `{row['rule']}` | {row['proxy_mean']:.4f} | {row['tau']:+.3f} | {row['setup_s']:.1f} | "
              f"{row['per_candidate_s']:.2f} |")
    print("\n| producer | MACs ratio | proxy score (l1) | from scratch | time to widths (s) |")
    print("|---|---|---|---|---|")
    for row in r["producers"]:
        print(f"| `{row['method']}` | {row['macs_ratio']:.3f} | {row['proxy']:.4f} | {row['scratch']:.4f} | "
              f"{row['seconds']:.1f} |")


if __name__ == "__main__":
    main()
