"""Fine-tuning a pruned model from its inherited weights, with and without distillation.

One base is trained, an architecture at a uniform width ratio is cut from it (weights inherited
by filter L1 norm), and the pruned model is fine-tuned by :func:`autoprune.finetune` for the
same steps with each seed, once with the cross-entropy alone and once with the KL divergence
to the base's outputs added (``--distill``). Prints one markdown row per seed and the means.

The defaults are a CPU run on the synthetic set (resnet20, a third of the widths) that takes a
few minutes on two cores:

    python experiments/bench_distill.py --out runs/bench-distill

On CIFAR-10: ``--dataset cifar10 --data-dir DIR --base-epochs 30 --epochs 5``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoprune import finetune  # noqa: E402
from autoprune.arch import make_arch, save_arch  # noqa: E402
from autoprune.checkpoint import save_checkpoint  # noqa: E402
from autoprune.dataspec import DataSpec  # noqa: E402
from autoprune.files import write_json  # noqa: E402
from autoprune.models import create_model  # noqa: E402
from autoprune.space import SearchSpace  # noqa: E402
from autoprune.train import TrainConfig, split_accuracy, train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench-distill")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--ratio", type=float, default=0.34, help="uniform width ratio of the pruned model")
    p.add_argument("--base-epochs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default=None)
    args = p.parse_args()
    out = Path(args.out)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = DataSpec(name=args.dataset, data_dir=args.data_dir, limit=args.limit).against(None, "").load(device)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=data.num_classes)
    train(model, data, TrainConfig.for_device(device, epochs=args.base_epochs), device=device, progress=False)
    base_acc = split_accuracy(model, data, "val", device=device)
    kwargs = {"num_classes": data.num_classes}
    base = save_checkpoint(out / "base.pt", model.cpu(), model_name=args.model, model_kwargs=kwargs, dataset=data.meta,
                           input_shape=list(data.input_shape))
    space = SearchSpace.from_model(create_model(args.model, **kwargs), tuple(data.input_shape), model_name=args.model)
    arch = save_arch(make_arch(args.model, kwargs, space, space.uniform(args.ratio)), out / "arch.json")
    rows = []
    for seed in args.seeds:
        for distill in (False, True):
            config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule="cosine",
                                 warmup=0.0, seed=seed)
            start = time.perf_counter()
            r = finetune(arch, base, data, distill=distill, config=config, device=device)
            rows.append({"seed": seed, "distill": distill, "val_acc": r.val_acc, "test_acc": r.test_acc,
                         "seconds": round(time.perf_counter() - start, 1)})
            print(f"| {seed} | {'distill' if distill else 'plain'} | {r.val_acc:.4f} | {r.test_acc:.4f} |", flush=True)
    for distill in (False, True):
        mine = [r for r in rows if r["distill"] == distill]
        print(f"| mean | {'distill' if distill else 'plain'} | {sum(r['val_acc'] for r in mine) / len(mine):.4f} | "
              f"{sum(r['test_acc'] for r in mine) / len(mine):.4f} |")
    write_json({"args": vars(args), "base_val_acc": base_acc, "rows": rows, "torch": torch.__version__,
                "device": str(device), "platform": platform.platform(), "date": datetime.date.today().isoformat()},
               out / "bench.json")


if __name__ == "__main__":
    main()
