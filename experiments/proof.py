"""The proof run: every performance claim of autoprune measured in one resumable command.

    python experiments/proof.py --out runs/proof --data-dir .data/cifar10-jpg.tar.gz       # one GPU
    python experiments/proof.py --out runs/proof --data-dir D --part 1 --budget-minutes 8  # in two sittings
    python experiments/proof.py --out runs/proof --data-dir D --part 2 --budget-minutes 8
    python experiments/proof.py --out runs/proof --data-dir D --part 3 --budget-minutes 8
    python experiments/proof.py --out runs/proof-smoke --smoke                               # CPU, minutes

Stages, in order; each writes its result into OUT/results.json (atomically) when it finishes
and is skipped when its result is already there, so running the same command again continues
where a time limit or a kill stopped the previous one. Long stages save each finished unit (a
search method, a retrained vector and seed) as they go.

part 1
  throughput  training-step img/s of VGG16 and ResNet-56: the fast path (resident uint8 data,
              batched augmentation, bf16 + channels_last on CUDA) vs a per-sample torchvision
              DataLoader, in the same run (experiments/bench_train.py's functions)
  base        VGG16 on CIFAR-10, 25 epochs (TrainConfig defaults: batch 512, lr 0.2 onecycle,
              label smoothing 0.1); test accuracy; checkpoint in OUT/base/model.pt
  search      budgets 0.4 and 0.1: abc, tpe, random (equal candidate counts), uniform,
              uniform-fill, l1-global, slimming, dmcp, each through autoprune.api.search on the
              base; then candidates/min with 1, 2, 4 scorer processes sharing one study (a
              journal file), with the GPU utilisation sampled meanwhile
  sweep       evaluator settings (fine-tune steps, BN batches, cudnn.benchmark): seconds per
              candidate and the proxy score of each of the tau stage's vectors under each
  tau         Kendall tau between the proxy score and 25-epoch from-scratch test accuracy over
              12 random equal-MACs vectors at budget 0.1, for each sweep setting; on CUDA several
              retrains at once in a small process pool (--workers)
part 2
  retrain     every winner and baseline from scratch (autoprune.arch.build), 25 epochs, 2
              seeds, in the same pool
  latency     built models: GPU batch 256 and 1 (CUDA), CPU batch 1 and 32, median of repeats,
              relative to the base
part 3 (needs parts 1 and 2; the classic pruning criteria)
  criteria    every keep rule (l1, bn_gamma, random, hrank, activation, apoz, reconstruct)
              scores the tau stage's 12 vectors with the search-default evaluator on the base:
              Kendall tau against the tau stage's from-scratch accuracies (no new training, only
              the data-driven rules' statistics on 256 training images), seconds per candidate
  producers   the one-shot producers hrank, activation and ssl at budgets 0.4 and 0.1 through
              autoprune.api.search, each winner retrained from scratch like the retrain stage
              (25 epochs, the same seeds), beside its uniform, slimming, l1-global and best
              searched rows

Finally OUT/proof.md: markdown tables with the aims beside the measured values.

``--config v2`` is the next proof, where searched widths should win if anywhere: MobileNetV2
and ResNet-56 at budgets 0.3, 0.1 and 0.05 (where reachable: MobileNetV2's smallest network is
0.074 of its MACs) and VGG16 at 0.1 for continuity. Per model and budget: abc and tpe with 160
candidates each, scored by 4 processes sharing the study; uniform, uniform-fill, l1-global,
slimming, dmcp and hrank beside them; every winner from scratch with seeds 0, 1, 2 (mean ± std,
and a paired t-test per seed against uniform-fill); a tau test over 24 vectors (the winners,
early-heavy, late-heavy and bottlenecked allocations, random draws to fill), each from scratch
with seeds 0 and 1, tau against the seed mean with a bootstrap interval, and tau between the
two seeds as the ceiling. Proxies scored on the same vectors, each timed: BatchNorm
re-estimation only, fine-tunes of 25, 100 and 400 steps, a multi-fidelity proxy (Optuna's
SuccessiveHalvingPruner over fine-tunes of 25, 100 and 400 steps: all get the cheap score, the top
quarter goes on) and 2 epochs from scratch; each ranked by tau (and tau per second) against both
finishes, from scratch and fine-tuned from the base (autoprune.finetune, 5 epochs). Stages
STAGE/MODEL/BUDGET[/sSEED] (proofstages/cells.py, proofstages/proxies.py), in 45 parts: a model's
base, then per budget its search, proxies, retrain, tau seeds and fine-tunes. Each part is sized
to under 8 minutes on one H200 (estimated, not yet measured; --budget-minutes 8 keeps a sitting
within its limit either way):

    python experiments/proof.py --config v2 --out runs/proof-v2 --data-dir D --part 1 --budget-minutes 8
    ...                                                                     --part 45
    python experiments/proof.py --config v2 --out runs/proof-v2-smoke --smoke    # CPU, about a minute

``--config v2-short`` is the part of v2 that fits one GPU session of about 15 minutes: MobileNetV2
at 0.1 only, abc and tpe with 150 candidates each, uniform, uniform-fill and l1-global, every
winner from scratch with seeds 0, 1, 2 for 10 epochs (base 15), 12 tau vectors with seeds 0 and 1,
the proxies without ft-400 and with 1 epoch from scratch, a 2-epoch fine-tuned finish; in two
parts of about 6.5 and 5.5 minutes (estimated from the first proof's speeds), each under the
device's 10-minute command limit. OUT must travel between them where the machine is not kept:

    python experiments/proof.py --config v2-short --out runs/proof-v2-short --data-dir D --part 1 --budget-minutes 8
    python experiments/proof.py --config v2-short --out runs/proof-v2-short --data-dir D --part 2 --budget-minutes 8

``--rehearse`` runs a v2 config's plan with its counts (candidates per search, scorer processes,
tau vectors, seeds, every proxy and finish) and every training cut to a few steps on synthetic
32 x 32 images, on the CPU: the plan run to its end in minutes, so that a GPU sitting is not spent
finding a fault (with --data-dir, on 2,000 real images). Its accuracies mean nothing:

    python experiments/proof.py --config v2-short --rehearse --out runs/rehearse --part 1
    python experiments/proof.py --config v2-short --rehearse --out runs/rehearse --part 2

``--config v2-cpu`` runs the same stages at CPU scale (ResNet-20 and MobileNetV2 at 0.1 and 0.3 on
10,000 CIFAR-10 images, one-epoch retrains, 8 tau vectors; proofstages/config.py says how it was
sized), for when no GPU is at hand; without --part it runs every part in order and resumes:

    nohup nice -n 10 python experiments/proof.py --config v2-cpu --out runs/proof-v2-cpu \
        --data-dir ../shared/datasets/cifar10-jpg.tar.gz > runs/proof-v2-cpu.log 2>&1 &

The code is the package experiments/proofstages/: one module per stage, the settings as data in
its config module (the v2 settings and parts beside the first proof's); this file is the command.

Time on one H200, measured (BENCHMARKS.md): throughput 33 s, base 21 s, search ~2 min
(16 searches and the concurrency runs), sweep 28 s, tau ~2 min (12 runs of 25 epochs, 3 at a
time), retrain ~6 min (32 runs), latency under 10 s: about 12 minutes, so one sitting of 10
minutes does not hold it. ``--part 1`` (about 5.5 minutes) and ``--part 2`` (about 6.5) split
it into two sittings.
Part 3 is estimated, not yet measured: criteria ~1.5 minutes (7 rules x 12 candidates at the
sweep's ~0.7 s, plus the rules' statistics), producers ~2.5 minutes (6 one-shot searches, ssl's
7 sparsity trainings of 100 steps each, at most 12 retrains 3 at a time at the tau stage's pace),
plus loading the data on a fresh machine: ``--part 3`` in about 5 minutes. A results file carried
to a machine without OUT/base/model.pt (experiments/results/proof-h200.json copied to
OUT/results.json) resumes into part 3: the base is trained again first (~20 s), and the report
says so.
``--budget-minutes`` stops cleanly before a stage or unit that its estimate says would not
fit; ``--part 1``, ``--part 2`` and ``--part 3`` split the run in three sittings.

``--smoke`` runs the same code with tiny settings: ResNet-20 on the synthetic dataset
(16 x 16 images), a few steps everywhere, on the CPU; with ``--data-dir`` it uses 2,000
training, 500 validation and 1,000 test images of the real CIFAR-10 instead.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from proofstages.main import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
