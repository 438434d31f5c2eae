"""The stages of the proof run (experiments/proof.py is the command), one module each.

config      the settings as data: parts, stage settings (full, smoke), aims
common      the results file, the --budget-minutes clock, the log, the environment, data loading
runner      Proof, the shared state of one invocation, and the retrain runner (sequential or a pool)
throughput, base, search, sweep, tau, retrain, latency, criteria, producers
            one stage each: ``stage_NAME(proof) -> dict``, the result stored under its name
report      OUT/proof.md from the results
cells       the v2 stages (--config v2), one model and budget at a time: STAGE/MODEL/BUDGET[/sSEED]
vectors     lopsided allocations on a budget (early-heavy, late-heavy, bottleneck) and the v2 tau set
stats       mean ± std, the paired test per seed, Kendall tau with a bootstrap interval
report2     OUT/proof.md of a v2 run
main        the options, the results file checked against the settings, the loop over stages

The modules import ``bench_search`` and ``bench_train`` from experiments/: the command puts that
folder on ``sys.path`` first.
"""
