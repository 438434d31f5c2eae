"""``stripe``: stripe-wise pruning with a Filter Skeleton (Meng et al., NeurIPS 2020), with an
exact budget.

A Filter Skeleton (one scalar per stripe, starting at 1) is put on every prunable conv of the
trained base (see :mod:`autoprune.stripe`); weights and skeleton are trained together on the
training split with ``penalty · Σ|FS|`` added to the loss. The paper then prunes the stripes
whose |FS| is below a fixed threshold, and the MACs fall where they fall; here the threshold
is chosen by bisection over the sorted |FS| so that the stripe MACs meet the budget (at most
the budget, and one more stripe would exceed it). The paper's threshold still applies as a floor: a
stripe with |FS| ≤ ``threshold`` is pruned even when the budget would allow it.

The result is not a width vector: a stripe mask per conv says what is left, and the only
channels removed are those of filters that keep no stripe (derived from the masks). Its one
candidate goes through the driver and the study like every one-shot method's: the full width
vector, costed as the stripe model (:meth:`StripePruner.cost`) and scored by the stripe
model's validation accuracy; the search writes the masks to the architecture JSON (schema
``autoprune.arch/2``, field ``stripes``). Training is seeded, so a rerun that finds the trial
stored trains the same skeleton again to write them.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.errors import SearchError
from autoprune.optimizers._base import Optimizer, register_optimizer
from autoprune.stripe import (
    budget_mask,
    export_stripes,
    fold_skeleton,
    insert_skeleton,
    skeleton_penalty,
    skeleton_values,
    stripe_layers,
    stripe_macs,
    stripe_params,
)
from autoprune.toolkit import batch_stream, lr_schedule, progress_bar, rng_scope, seed_step, set_lr
from autoprune.train import split_accuracy


@dataclass(frozen=True)
class StripeConfig:
    """How the skeleton is trained: ``epochs`` over the training split (or ``steps`` batches
    when given), SGD at ``lr`` with momentum 0.9 and ``weight_decay`` on the weights (not on
    FS), ``penalty`` on Σ|FS| (paper: 1e-5), ``threshold`` the paper's fixed cut on |FS|
    (0.01), ``train_weights=False`` to train the skeleton alone (weights frozen)."""

    epochs: int = 1
    steps: int | None = None
    lr: float = 0.01
    weight_decay: float = 5e-4
    penalty: float = 1e-5
    threshold: float = 0.01
    batch_size: int = 64
    train_weights: bool = True
    seed: int = 0


def train_skeleton(model: nn.Module, data, config: StripeConfig, *, device, progress: bool = False) -> dict:
    """Train ``model`` (which carries a skeleton) in place with the FS L1 penalty; a summary."""
    model.train()
    fs = [p for n, p in model.named_parameters() if n.endswith(".fs")]
    weights = [p for n, p in model.named_parameters() if not n.endswith(".fs")]
    for p in weights:
        p.requires_grad_(config.train_weights)
    groups = [{"params": fs, "weight_decay": 0.0}]
    if config.train_weights:
        groups.append({"params": weights, "weight_decay": config.weight_decay})
    sgd = torch.optim.SGD(groups, lr=config.lr, momentum=0.9)
    total = config.steps or config.epochs * data.num_batches("train", batch_size=config.batch_size, train=True)
    losses, start = [], time.perf_counter()
    stream = batch_stream(data, batch_size=config.batch_size, seed=config.seed, stop=total, device=device)
    with rng_scope(device), progress_bar(total, "stripe", progress) as bar:
        for step, x, y in stream:
            seed_step(config.seed, step)
            set_lr(sgd, config.lr * lr_schedule(step, total))
            loss = F.cross_entropy(model(x), y)
            sgd.zero_grad(set_to_none=True)
            (loss + config.penalty * skeleton_penalty(model)).backward()
            sgd.step()
            losses.append(float(loss.detach()))
            if len(losses) % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
            bar.update()
    for p in weights:
        p.requires_grad_(True)
    return {"steps": len(losses), "final_loss": round(sum(losses[-20:]) / max(len(losses[-20:]), 1), 4),
            "seconds": round(time.perf_counter() - start, 2)}


@dataclass
class StripeResult:
    masks: dict
    model: nn.Module
    score: float | None
    info: dict


def search_stripes(base: nn.Module, space, data, config: StripeConfig, *, max_macs: int, device,
                   progress: bool = False) -> StripeResult:
    """Skeleton on ``base`` (a copy), trained, pruned to ``max_macs``; the exported stripe model."""
    graph = space.graph
    layers = stripe_layers(base, graph)
    if not layers.shapes:
        raise SearchError("method 'stripe' found no conv with a kernel larger than 1x1 to prune stripes in")
    model = insert_skeleton(copy.deepcopy(base).to(device), layers)
    trained = train_skeleton(model, data, config, device=device, progress=progress)
    scores = skeleton_values(model)
    masks, budget = budget_mask(graph, scores, max_macs, floor=config.threshold)
    paper_masks = {n: s.abs() > config.threshold for n, s in scores.items()}
    exported = export_stripes(fold_skeleton(model), graph, masks).eval()
    score = split_accuracy(exported, data, "val", device=device) if data.num_examples("val") else None
    info = {"config": asdict(config), "training": trained, "budget": budget,
            "paper_threshold_macs": stripe_macs(graph, paper_masks),
            "left_whole": dict(layers.skipped),
            "empty_filters": sum(int((~m.flatten(1).any(1)).sum()) for m in masks.values()),
            "removed_channels": budget["removed_channels"]}
    return StripeResult(masks, exported, score, info)


@register_optimizer
class StripePruner(Optimizer):
    """Stripe-wise pruning (see the module docstring); one stripe-pruned model."""

    name = "stripe"
    summary = ("stripe-wise pruning (Meng et al., 2020): a Filter Skeleton trained from the base with an L1 "
               "penalty, its threshold set by the budget")
    needs_base = True
    needs_data = True
    one_shot = True
    granularity = "stripe"

    def __init__(self, space, limits, *, seed=0, **options):
        super().__init__(space, limits, seed=seed)
        try:
            self.config = StripeConfig(seed=seed, **options)
        except TypeError as exc:
            raise SearchError(f"method 'stripe': {exc}") from None
        self.result: StripeResult | None = None

    def prepare(self, context):
        if context.data is None or context.base is None:
            raise SearchError("method 'stripe' trains a Filter Skeleton on the base model and needs data and a base")
        self.result = search_stripes(context.base, self.space, context.data, self.config, max_macs=self.limits.max_macs,
                                     device=context.device, progress=context.progress)

    def propose(self, rng, pending):
        return self.propose_once(self.space.max_widths(), self.name, pending)

    def cost(self, widths):
        """The stripe model's MACs and params (the candidate's widths are the full ones)."""
        return stripe_macs(self.space.graph, self.result.masks), stripe_params(self.space.graph, self.result.masks)

    def report(self) -> dict:
        return {} if self.result is None else {"stripe": self.result.info}
