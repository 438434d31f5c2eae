"""Differentiable Markov Channel Pruning (Guo et al., *DMCP*, CVPR 2020) on any traced model.

Each free channel group keeps its smallest allowed width for sure; the channels above it are
split into ordered blocks whose boundaries are the group's other allowed widths, so every
width the method can produce is a grid point of the search space. Block ``k`` is kept with
probability ``p_k = sigmoid(α_k)`` *given that block k-1 is kept*; its marginal keep
probability is ``P_k = p_1 ⋯ p_k``. A width vector is thus a Markov chain per group, and a
narrower width can never keep a later block: no two parameter settings encode the same net.

Training alternates two kinds of step on the same supernet (the traced model at full width):

* **weight steps** (the sandwich rule): the widest network learns from the labels, the
  narrowest and two widths drawn from the Markov process learn from the widest network's
  soft outputs (in-place distillation). Narrower networks are realised by masking channel
  blocks to zero, which in train mode computes exactly what the materialised network does;
* **architecture steps**: every block's output is scaled by its marginal ``P_k``, the
  cross-entropy of that expected network plus ``λ`` × a budget loss on the expected MACs
  (the analytic cost model evaluated at the expected widths) is minimised w.r.t. α only.
  With a latency limit, the expected latency under the chains' width distributions (from the
  measured latency table, :class:`~autoprune.latency.ExpectedLatency`) is held under it the
  same way.

Gating is per *group*, through forward hooks on the layers whose outputs carry the group's
channels, so coupled layers (a residual stage, both sides of a depthwise conv) share their
group's α with no per-model code. The derived width vector is repaired into the budget (and
the latency limit) like every other method's candidate.

>>> from autoprune.data import load_data
>>> from autoprune.models import create_model
>>> from autoprune.space import SearchSpace, Widths
>>> from autoprune.budget import Limits
>>> data = load_data("synthetic", val_size=64, n_train=256, image_size=16)
>>> model = create_model("resnet20", num_classes=data.num_classes)
>>> space = SearchSpace.from_model(model, (3, 16, 16))
>>> widths, info = search_dmcp(model, space, data, DMCPConfig(steps=4, batch_size=32),
...                            limits=Limits.of(space, 0.5))
>>> len(widths) == len(space)
True
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from autoprune import cost
from autoprune.budget import Limits, repair
from autoprune.checks import check_counts
from autoprune.errors import CheckpointError, SearchError, one_line
from autoprune.evaluator import recalibrate_bn
from autoprune.files import torch_save
from autoprune.graph import fx_graph_module, in_positions
from autoprune.latency import ExpectedLatency
from autoprune.optimizers._base import Optimizer, register_optimizer
from autoprune.runtime import autocast
from autoprune.space import SearchSpace, Widths
from autoprune.toolkit import (
    batch_stream,
    derive_seed,
    lr_schedule,
    param_groups,
    prepare_model,
    progress_bar,
    rng_scope,
    seed_step,
    set_lr,
)
from autoprune.train import split_accuracy

CHECKPOINT_FORMAT = "autoprune.dmcp/1"
CHECKPOINT_NAME = "dmcp.pt"
DERIVE_MODES = ("expected", "direct")


class DMCPResult(NamedTuple):
    """What :func:`search_dmcp` returns: unpacks as ``widths, info``."""

    widths: Widths
    info: dict


# --------------------------------------------------------------------------------------------
# The architecture: α, block structure, expected widths and MACs. Pure tensor maths, no model.
# --------------------------------------------------------------------------------------------


class MarkovChain(nn.Module):
    """Transition logits α of every free group's Markov chain over its channel blocks.

    ``alpha`` is one flat parameter; group ``i`` owns ``alpha[offsets[i]:offsets[i+1]]``,
    one entry per allowed width above its smallest. The default initialisation makes the
    chain draw every allowed width with equal probability, so weight training before the
    architecture steps start sees the uniform sandwich of slimmable networks.
    """

    def __init__(self, space: SearchSpace, *, init: str = "uniform"):
        super().__init__()
        self.space = space
        self.mins = [c[0] for c in space.choices]
        self.sizes = [torch.tensor(np.diff(c), dtype=torch.long) for c in space.choices]
        counts = [len(c) - 1 for c in space.choices]
        self.offsets = [0, *np.cumsum(counts).tolist()]
        if init == "uniform":
            # p_k = (K+1-k)/(K+2-k) gives P_k = (K+1-k)/(K+1): every one of the K+1 widths equally likely.
            init_p = [torch.tensor([(k_ - k) / (k_ + 1 - k) for k in range(k_)], dtype=torch.float64)
                      for k_ in counts]
            alpha = torch.cat([torch.logit(p) for p in init_p]).float()
        elif init == "full":
            alpha = torch.full((self.offsets[-1],), 4.0)
        else:
            raise SearchError(f"unknown DMCP initialisation '{init}'; expected uniform or full")
        self.alpha = nn.Parameter(alpha)

    def __len__(self) -> int:
        return len(self.mins)

    def group_alpha(self, i: int) -> torch.Tensor:
        return self.alpha[self.offsets[i]:self.offsets[i + 1]]

    def transition_probs(self) -> list[torch.Tensor]:
        """p_k per group: probability that block k is kept given block k-1 is."""
        return [torch.sigmoid(self.group_alpha(i)) for i in range(len(self))]

    def marginal_probs(self) -> list[torch.Tensor]:
        """P_k per group: probability that block k (and so every earlier block) is kept."""
        return [torch.cumprod(p, 0) for p in self.transition_probs()]

    def width_probs(self, marginals: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Per group, the probability of each allowed width (float64): ``P_k - P_{k+1}``, summing to one."""
        marginals = self.marginal_probs() if marginals is None else marginals
        out = []
        for p in marginals:
            p = p.double()
            kept = torch.cat([p.new_ones(1), p, p.new_zeros(1)])
            out.append(kept[:-1] - kept[1:])
        return out

    def expected_widths(self, marginals: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Expected width of every free group, as differentiable float64 scalars."""
        marginals = self.marginal_probs() if marginals is None else marginals
        return [m + (s.to(p.device, torch.float64) * p.double()).sum()
                for m, s, p in zip(self.mins, self.sizes, marginals)]

    def expected_macs(self) -> torch.Tensor:
        """The analytic MACs of the expected widths (differentiable w.r.t. α)."""
        return cost.macs(self.space, self.expected_widths())

    def channel_scales(self, marginals: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        """Per-channel multipliers of every free group: 1 for the kept minimum, P_k on block k."""
        out = {}
        for gid, m, s, p in zip(self.space.free, self.mins, self.sizes, marginals):
            ones = torch.ones(m, device=p.device, dtype=p.dtype)
            out[gid] = torch.cat([ones, torch.repeat_interleave(p, s.to(p.device))])
        return out

    def masks(self, widths: Sequence[int]) -> dict[int, torch.Tensor]:
        """0/1 multipliers that keep the first ``widths[i]`` channels of each free group."""
        dev = self.alpha.device
        return {gid: (torch.arange(c[-1], device=dev) < w).float()
                for gid, c, w in zip(self.space.free, self.space.choices, widths)}

    @torch.no_grad()
    def sample(self, generator: torch.Generator) -> Widths:
        """A width vector drawn from the Markov process (block by block, stopping at the first drop)."""
        out = []
        for c, p in zip(self.space.choices, self.transition_probs()):
            u = torch.rand(len(p), generator=generator, dtype=torch.float64)
            kept = int(torch.cumprod((u < p.detach().double().cpu()).long(), 0).sum())
            out.append(c[kept])
        return tuple(out)

    @torch.no_grad()
    def expected_choice(self) -> Widths:
        """Each group's expected width rounded to its nearest allowed width (ties go down)."""
        out = []
        for c, e in zip(self.space.choices, self.expected_widths()):
            e = float(e)
            out.append(min(c, key=lambda w: (abs(w - e), w)))
        return tuple(out)

    def alpha_for(self, widths: Sequence[int], margin: float = math.inf) -> torch.Tensor:
        """α whose chains keep exactly the blocks of ``widths`` (P ∈ {0, 1} for ``margin=inf``)."""
        parts = []
        for c, w in zip(self.space.choices, self.space.validate(widths)):
            kept = c.index(w)
            parts.append(torch.tensor([margin if k < kept else -margin for k in range(len(c) - 1)]))
        return torch.cat(parts).to(self.alpha)


def budget_loss(expected_macs: torch.Tensor, target: float, band: float = 0.05, *,
                expected_ms: torch.Tensor | None = None, max_ms: float | None = None) -> torch.Tensor:
    """Zero while ``expected_macs`` lies in ``[(1 - band)·target, target]``, logarithmic outside.

    ``log(1 + d / (band·target))`` with ``d`` the distance to the nearer edge of the band: the
    slope at the edge equals that of the paper's ``log|E - edge|`` at a distance of one band
    width, strong enough to pull the expectation in, and continuous, so Adam does not chatter
    across the edge.

    With a latency limit (``expected_ms``, ``max_ms``), an expected latency above ``max_ms`` is
    penalised the same way, and the band's lower edge holds for the tighter of the two: the
    expectation is pulled up only while both MACs and latency lie below their bands, so that
    a binding latency limit is not fought by the MACs term.
    """
    used = expected_macs / target
    over = F.relu(used - 1.0)
    if expected_ms is not None:
        ms_used = expected_ms / max_ms
        over = over + F.relu(ms_used - 1.0)
        used = torch.maximum(used, ms_used)
    return torch.log1p((over + F.relu((1.0 - band) - used)) / band)


# --------------------------------------------------------------------------------------------
# Gating a traced model through forward hooks.
# --------------------------------------------------------------------------------------------


def gate_sites(model: nn.Module, space: SearchSpace) -> list[tuple[str, tuple[int, ...]]]:
    """The layers whose outputs are scaled, with the group layout of their output channels.

    Every norm layer over a free group is a site: it is the last point where a channel's
    scale would not be normalised away. A conv or linear producer is a site only when some
    consumer of its output is not a norm; a depthwise conv never is (its input carries the
    scale already, and a norm after it is a site of its own). In train mode a norm undoes
    any scale applied before it, so each channel reaches every consumer scaled exactly
    once along each path; at a residual add each branch is scaled, hence the sum once.
    """
    graph = space.graph
    free = set(space.free)
    norms = {layer.name for layer in graph.layers if layer.kind == "norm"}
    users: dict[str, list[fx.Node]] = {}
    for node in fx_graph_module(model, graph).graph.nodes:  # frozen leaves stay single nodes
        if node.op == "call_module":
            users.setdefault(node.target, []).extend(node.users)
    sites = []
    for layer in graph.layers:
        if layer.kind == "norm":
            layout = layer.in_layout
        elif layer.out_group is not None:
            following = users.get(layer.name, [])
            if following and all(u.op == "call_module" and u.target in norms for u in following):
                continue
            layout = (layer.out_group,)
        else:
            continue
        if free.intersection(layout):
            sites.append((layer.name, tuple(layout)))
    covered = {g for _, layout in sites for g in layout}
    missing = [space.graph.groups[g].name for g in space.free if g not in covered]
    if missing:
        raise SearchError(f"DMCP cannot gate channel group(s) {missing[:3]}: no layer's output carries them")
    return sites


class Gates:
    """Forward hooks that multiply each site's output channels by per-group factors.

    ``set(scales)`` takes ``{group id: per-channel factors}`` for the free groups (marginal
    probabilities, or 0/1 masks) and builds each site's vector once; ``set(None)`` turns the
    hooks into no-ops. :meth:`remove` detaches them.
    """

    def __init__(self, model: nn.Module, space: SearchSpace):
        self.space = space
        self.sites = gate_sites(model, space)
        self._vectors: dict[str, torch.Tensor] | None = None
        self._handles = [model.get_submodule(name).register_forward_hook(self._hook(name))
                         for name, _ in self.sites]

    def _hook(self, name: str):
        def hook(module, inputs, out):
            if self._vectors is None:
                return None
            v = self._vectors[name].to(out.dtype)
            return out * v.view(1, -1, *([1] * (out.ndim - 2)))
        return hook

    def set(self, scales: dict[int, torch.Tensor] | None) -> None:
        if scales is None:
            self._vectors = None
            return
        groups = self.space.graph.groups
        # A norm site gates its input layout; a producer site its output group, never permuted.
        perms = {layer.name: layer.in_perm for layer in self.space.graph.layers if layer.kind == "norm"}
        some = next(iter(scales.values()))

        def factors(g: int) -> torch.Tensor:
            f = groups[g].follows
            if g in scales:
                return scales[g]
            if f is not None and f.kind == "range" and f.parent in scales:
                return scales[f.parent][f.index:f.count]  # the channels of its parent it carries
            return torch.ones(groups[g].width, device=some.device, dtype=some.dtype)

        vectors = {}
        for name, layout in self.sites:
            v = torch.cat([factors(g) for g in layout])
            if perms.get(name) is not None:  # a norm after a shuffle: channels in position order
                v = in_positions(v, perms[name])
            vectors[name] = v
        self._vectors = vectors

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._vectors = None


# --------------------------------------------------------------------------------------------
# The search.
# --------------------------------------------------------------------------------------------


@dataclass
class DMCPConfig:
    """Hyper-parameters of one DMCP search; saved into its checkpoint.

    The length of the search is ``steps`` weight steps, or ``epochs`` passes over the
    training split (30 when neither is given). ``warmup`` is the fraction of steps that
    train weights only (the chain stays at its uniform initialisation). ``lr`` is the SGD
    peak learning rate of the weights (half-cosine decay), ``arch_lr`` Adam's for α.
    ``penalty`` is λ of the budget loss, ``band`` its width below the target. ``derive`` is
    ``expected`` (round the expected widths) or ``direct`` (best of ``samples`` Markov draws
    plus the expected choice, by accuracy on ``eval_batches`` validation batches after
    re-estimating BatchNorm on ``recal_batches``).
    """

    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 128
    warmup: float = 0.3
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    arch_lr: float = 0.02
    arch_every: int = 1
    penalty: float = 1.0
    band: float = 0.05
    random_samples: int = 2
    init: str = "uniform"
    derive: str = "expected"
    samples: int = 8
    eval_batches: int = 4
    recal_batches: int = 8
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self):
        check_counts(dmcp_steps=self.steps, dmcp_batch_size=self.batch_size, error=SearchError)
        if self.epochs is not None and not self.epochs > 0:
            raise SearchError(f"DMCP epochs must be positive, got {self.epochs}")
        if not 0 <= self.warmup < 1:
            raise SearchError(f"DMCP warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.derive not in DERIVE_MODES:
            raise SearchError(f"unknown DMCP derivation '{self.derive}'; expected {' or '.join(DERIVE_MODES)}")
        if not 0 < self.band < 1:
            raise SearchError(f"DMCP band must be in (0, 1), got {self.band}")

    def resolved(self, data) -> "DMCPConfig":
        """This config with ``steps`` fixed from ``epochs`` and the size of ``data``'s training split."""
        if self.steps is not None:
            return self
        per_epoch = data.num_batches("train", batch_size=self.batch_size, train=True)
        steps = max(1, int(round((30 if self.epochs is None else self.epochs) * per_epoch)))
        return replace(self, steps=steps)

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup * self.steps))


@dataclass
class _SupernetRun:
    """The state of one DMCP search: the supernet, the chain, its gates and both optimizers."""

    supernet: nn.Module
    chain: MarkovChain
    gates: Gates
    w_opt: torch.optim.Optimizer
    a_opt: torch.optim.Optimizer
    config: DMCPConfig
    target: float
    device: torch.device
    limits: Limits
    expected_latency: ExpectedLatency | None = None

    @classmethod
    def start(cls, model, space, config, limits: Limits, device) -> "_SupernetRun":
        supernet = prepare_model(copy.deepcopy(model), device)
        chain = MarkovChain(space, init=config.init).to(device)
        w_opt = torch.optim.SGD(param_groups(supernet, config.weight_decay), lr=config.lr,
                                momentum=config.momentum, nesterov=config.momentum > 0)
        a_opt = torch.optim.Adam(chain.parameters(), lr=config.arch_lr, betas=(0.5, 0.999))
        expected_latency = ExpectedLatency(limits.table, space) if limits.table is not None else None
        return cls(supernet, chain, Gates(supernet, space), w_opt, a_opt, config, float(limits.max_macs), device,
                   limits, expected_latency)

    def step(self, step: int, xb, yb) -> tuple[float, dict | None]:
        """One weight step and, after the warm-up, one architecture step; (loss, arch stats)."""
        c = self.config
        seed_step(c.seed, step)  # dropout and the like, resumable
        set_lr(self.w_opt, c.lr * lr_schedule(step, c.steps))
        w_loss = _weight_step(self.supernet, self.chain, self.gates, self.w_opt, xb, yb, c, step, self.device)
        if step >= c.warmup_steps and (step - c.warmup_steps) % c.arch_every == 0:
            return w_loss, _arch_step(self.supernet, self.chain, self.gates, self.a_opt, xb, yb, self.target, c,
                                      self.device, self.expected_latency, self.max_ms)
        return w_loss, None

    @property
    def max_ms(self) -> float | None:
        return self.limits.max_ms if self.limits.table is not None else None


def search_dmcp(model: nn.Module, space: SearchSpace, data, config: DMCPConfig | None = None, *, limits: Limits,
                device: str | torch.device = "cpu", out_dir: str | os.PathLike | None = None, resume: bool = True,
                progress: bool = False) -> DMCPResult:
    """Search widths for ``model`` within ``limits`` by DMCP; returns ``DMCPResult(widths, info)``.

    With a latency limit the architecture steps also hold the chains' expected latency (from
    its table) under it, and the derived widths are repaired into that limit exactly.

    ``model`` (trained or not) is copied; the copy is the supernet whose weights are trained.
    With ``out_dir`` the state is checkpointed there every ``config.checkpoint_every`` steps
    (and at the end) and, with ``resume``, picked up again.

    ``widths`` is within ``limits`` and on the space's grid. ``info`` holds the expected
    MACs ratio reached, the expected widths, the derived candidates and their scores, the
    per-group transition probabilities, a short history and the wall time.
    """
    device = torch.device(device)
    if not len(space):
        raise SearchError("the search space has no free channel group: nothing for DMCP to search")
    limits.check_reachable(space)
    config = (config or DMCPConfig()).resolved(data)
    ckpt_path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    start = time.perf_counter()
    run = _SupernetRun.start(model, space, config, limits, device)
    step, history = 0, []
    if ckpt_path is not None and resume and ckpt_path.exists():
        step, history = _load(ckpt_path, run, space)
    resumed_from = step
    _train_loop(run, data, space, step, history, ckpt_path, progress)
    info = _summary(run, space, history, resumed_from, start)
    rng = np.random.default_rng(config.seed)
    if config.derive == "expected":
        raw = run.chain.expected_choice()
        widths = repair(space, raw, limits, rng=rng)
        candidates = [{"source": "expected", "raw": list(raw), "widths": list(widths), "score": None}]
    else:
        widths, candidates = _derive_direct(run, data, space, rng)
    run.gates.remove()
    base = float(cost.base_macs(space))
    info.update(macs=int(cost.macs(space, widths)), ratio=cost.macs(space, widths) / base, candidates=candidates,
                seconds=time.perf_counter() - start)
    return DMCPResult(tuple(int(w) for w in widths), info)


def _train_loop(run: _SupernetRun, data, space, step: int, history: list, ckpt_path: Path | None,
                progress: bool) -> None:
    config, base = run.config, float(cost.base_macs(space))
    stream = batch_stream(data, batch_size=config.batch_size, seed=config.seed, start=step, stop=config.steps,
                          device=run.device, channels_last=run.device.type == "cuda")
    with rng_scope(run.device), progress_bar(config.steps, "dmcp", progress, initial=step) as bar:
        for step, xb, yb in stream:
            w_loss, a_stats = run.step(step, xb, yb)
            done = step + 1
            if a_stats is not None or done % 10 == 0 or done == config.steps:
                ratio = (a_stats["expected_macs"] if a_stats else _no_grad_macs(run.chain)) / base
                bar.set_postfix_str(f"E[MACs]/base {ratio:.3f} → {run.target / base:.3f}  loss {w_loss:.3f}")
                if done % 10 == 0 or done == config.steps:
                    history.append({"step": done, "expected_ratio": round(ratio, 5), "loss": round(w_loss, 5)})
            bar.update(1)
            if ckpt_path is not None and (done % config.checkpoint_every == 0 or done == config.steps):
                _save(ckpt_path, run, space, done, history)


@torch.no_grad()
def _summary(run: _SupernetRun, space, history: list, resumed_from: int, start: float) -> dict:
    config, base = run.config, float(cost.base_macs(space))
    expected_macs = float(run.chain.expected_macs())
    return {
        "method": "dmcp",
        "steps": config.steps,
        "warmup_steps": config.warmup_steps,
        "resumed_from": resumed_from,
        "target_macs": int(run.target),
        "target_ratio": run.target / base,
        "expected_macs": expected_macs,
        "expected_ratio": expected_macs / base,
        "expected_widths": [round(float(w), 3) for w in run.chain.expected_widths()],
        **_latency_summary(run),
        "derive": config.derive,
        "transition_probs": {name: [round(float(p), 4) for p in ps]
                             for name, ps in zip(space.names, run.chain.transition_probs())},
        "history": history,
        "config": asdict(config),
        "seconds": time.perf_counter() - start,
    }


@register_optimizer
class DMCPOptimizer(Optimizer):
    """DMCP as a one-shot method: ``prepare`` trains the gated supernet from the base and
    derives one width vector, which is then scored like any other candidate.

    Options are the fields of :class:`DMCPConfig`; the supernet's checkpoint goes to
    ``context.out_dir`` so that an interrupted search resumes.
    """

    name = "dmcp"
    summary = "differentiable Markov channel pruning (Guo et al., 2020): a gated supernet trained from the base"
    needs_base = True
    needs_data = True
    one_shot = True

    def __init__(self, space, limits, *, seed=0, **options):
        super().__init__(space, limits, seed=seed)
        unknown = sorted(set(options) - {f.name for f in fields(DMCPConfig)})
        if unknown:
            raise SearchError(f"unknown dmcp option(s) {', '.join(unknown)}; expected fields of DMCPConfig")
        self.config = DMCPConfig(**{"seed": seed, **options})
        self.result: DMCPResult | None = None

    def prepare(self, context):
        if context.data is None or context.base is None:
            raise SearchError("method 'dmcp' trains a supernet from the base model and needs data and a base")
        self.result = search_dmcp(context.base, self.space, context.data, self.config, limits=self.limits,
                                  device=context.device, out_dir=context.out_dir, progress=context.progress)

    def propose(self, rng, pending):
        return self.propose_once(self.result.widths, "dmcp", pending)

    def report(self) -> dict:
        if self.result is None:
            return {}
        keys = ("steps", "expected_ratio", "target_ratio", "expected_ms", "max_ms", "derive", "seconds")
        return {"dmcp": {k: self.result.info[k] for k in keys if k in self.result.info}}


def _weight_step(supernet, chain, gates, opt, x, y, config, step, device) -> float:
    """Sandwich rule: widest on labels; narrowest and Markov draws distilled from the widest."""
    supernet.train()
    space = chain.space
    gen = torch.Generator().manual_seed(derive_seed(config.seed, step, 2))
    opt.zero_grad(set_to_none=True)
    gates.set(None)
    with autocast(device):
        teacher = supernet(x)
    loss = F.cross_entropy(teacher.float(), y)
    loss.backward()
    soft = F.softmax(teacher.detach().float(), 1)
    students = [space.min_widths()] + [chain.sample(gen) for _ in range(config.random_samples)]
    for widths in students:
        gates.set(chain.masks(widths))
        with autocast(device):
            out = supernet(x)
        F.kl_div(F.log_softmax(out.float(), 1), soft, reduction="batchmean").backward()
    gates.set(None)
    opt.step()
    return float(loss.detach())


def _arch_step(supernet, chain, gates, opt, x, y, target, config, device, expected_latency=None,
               max_ms=None) -> dict:
    """One Adam step on α: cross-entropy of the expected network + λ · budget loss (MACs, and latency if limited)."""
    supernet.train()
    opt.zero_grad(set_to_none=True)
    marginals = chain.marginal_probs()
    gates.set(chain.channel_scales(marginals))
    with autocast(device):
        out = supernet(x)
    gates.set(None)
    ce = F.cross_entropy(out.float(), y)
    expected = cost.macs(chain.space, chain.expected_widths(marginals))
    ms = expected_latency(chain.width_probs(marginals)) if expected_latency is not None else None
    reg = budget_loss(expected, target, config.band, expected_ms=ms, max_ms=max_ms)
    (ce + config.penalty * reg).backward(inputs=[chain.alpha])
    opt.step()
    stats = {"ce": float(ce.detach()), "budget": float(reg.detach()), "expected_macs": float(expected.detach())}
    if ms is not None:
        stats["expected_ms"] = float(ms.detach())
    return stats


def _derive_direct(run: _SupernetRun, data, space, rng):
    """Best of the expected choice and ``samples`` Markov draws, each repaired into the limits."""
    config, chain, supernet = run.config, run.chain, run.supernet
    gen = torch.Generator().manual_seed(derive_seed(config.seed, config.steps, 3))
    raws = [("expected", chain.expected_choice())] + [("sample", chain.sample(gen)) for _ in range(config.samples)]
    split = "val" if data.num_examples("val") > 0 else "train"
    state = copy.deepcopy(supernet.state_dict())  # BN statistics are re-estimated per candidate
    seen, candidates = {}, []
    for source, raw in raws:
        widths = repair(space, raw, run.limits, rng=rng)
        if widths not in seen:
            run.gates.set(chain.masks(widths))
            recalibrate_bn(supernet, data, batches=config.recal_batches, batch_size=config.batch_size,
                           device=run.device, seed=config.seed)
            seen[widths] = split_accuracy(supernet, data, split, device=run.device, batch_size=config.batch_size,
                                          max_batches=config.eval_batches)
            supernet.load_state_dict(state)
        candidates.append({"source": source, "raw": list(raw), "widths": list(widths), "score": seen[widths]})
    run.gates.set(None)
    best = max(candidates, key=lambda c: c["score"])  # first of equals: the expected choice wins ties
    return tuple(best["widths"]), candidates


# --------------------------------------------------------------------------------------------
# Plumbing: checkpoints.
# --------------------------------------------------------------------------------------------


def _fingerprint(config: DMCPConfig, space: SearchSpace, limits: Limits) -> dict:
    """What a checkpoint must agree on to be resumed (everything that shapes the run)."""
    d = asdict(config)
    # Derivation settings do not shape training: a finished search may be re-derived another way.
    for key in ("checkpoint_every", "derive", "samples", "eval_batches", "recal_batches", "epochs"):
        d.pop(key)
    out = {"config": d, "groups": list(space.names), "choices": [list(c) for c in space.choices],
           "target": float(limits.max_macs)}
    if limits.table is not None:  # absent without one, so that checkpoints of MACs-only searches still resume
        out["latency"] = {"max_ms": limits.max_ms, "table": limits.table.id}
    return out


def _save(path: Path, run: _SupernetRun, space, step, history) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": _fingerprint(run.config, space, run.limits),
        "step": step,
        "history": history,
        "model": run.supernet.state_dict(),
        "alpha": run.chain.alpha.detach().clone(),
        "weight_optimizer": run.w_opt.state_dict(),
        "arch_optimizer": run.a_opt.state_dict(),
    }
    torch_save(state, path)


def _load(path: Path, run: _SupernetRun, space) -> tuple[int, list]:
    try:
        state = torch.load(path, map_location=run.chain.alpha.device, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read DMCP checkpoint {path}: {one_line(exc)}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a DMCP checkpoint ({CHECKPOINT_FORMAT})")
    if state["fingerprint"] != _fingerprint(run.config, space, run.limits):
        raise CheckpointError(f"DMCP checkpoint {path} belongs to another search (different model, budget or "
                              "settings); use another output directory or pass resume=False")
    run.supernet.load_state_dict(state["model"])
    with torch.no_grad():
        run.chain.alpha.copy_(state["alpha"])
    run.w_opt.load_state_dict(state["weight_optimizer"])
    run.a_opt.load_state_dict(state["arch_optimizer"])
    return int(state["step"]), list(state["history"])


@torch.no_grad()
def _latency_summary(run: _SupernetRun) -> dict:
    """The expected latency reached and the limit, when the search has one."""
    if run.limits.table is None:
        return {}
    return {"expected_ms": float(run.expected_latency(run.chain.width_probs())), "max_ms": run.limits.max_ms}


@torch.no_grad()
def _no_grad_macs(chain: MarkovChain) -> float:
    return float(chain.expected_macs())
