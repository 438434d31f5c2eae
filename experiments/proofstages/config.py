"""Settings of the proof run as data: the parts, the stage settings (full and smoke) and the aims."""

from __future__ import annotations

# The tau stage needs only the sweep: it closes part 1 so that parts 1 and 2 each fit one sitting.
PART1 = ("throughput", "base", "search", "sweep", "tau")
PART2 = ("retrain", "latency")
PART3 = ("criteria", "producers")
PARTS = {None: PART1 + PART2 + PART3, 1: PART1, 2: PART2, 3: PART3}  # --part: the stages it runs
SEARCHED = ("abc", "tpe", "random")  # the methods that search, with an equal candidate count
ONE_SHOT = ("uniform", "uniform-fill", "l1-global", "slimming", "dmcp")

FULL = {
    "model": "vgg16", "throughput_models": ["vgg16", "resnet56"],
    "data": {"name": "cifar10", "val_size": 5000, "limit": None, "options": {}}, "test_limit": None,
    "threads": None,
    "throughput": {"batch_size": 512, "warmup": 10, "steps": 30, "repeats": 3, "loader_workers": 8},
    "train": {"epochs": 25, "batch_size": 512, "lr": 0.2, "max_steps": None},
    "budgets": ["0.4", "0.1"], "candidates": 12,
    "eval": {"fine_tune_steps": None, "bn_batches": None, "batch_size": None},  # EvalConfig's GPU defaults
    "search_cudnn_benchmark": False,
    "dmcp": {"steps": 300, "batch_size": 256},
    "concurrency": {"workers": [1, 2, 4], "candidates_per_worker": 4, "budget": "0.1", "method": "random"},
    "sweep": [{"fine_tune_steps": 0, "bn_batches": 40, "cudnn_benchmark": False},
              {"fine_tune_steps": 25, "bn_batches": 40, "cudnn_benchmark": False},
              {"fine_tune_steps": 50, "bn_batches": 40, "cudnn_benchmark": False},
              {"fine_tune_steps": 50, "bn_batches": 10, "cudnn_benchmark": False},
              {"fine_tune_steps": 100, "bn_batches": 40, "cudnn_benchmark": False},
              # Autotuning every new shape costs seconds per candidate: timed on 4 vectors only.
              {"fine_tune_steps": 100, "bn_batches": 40, "cudnn_benchmark": True, "vectors": 4}],
    "seeds": [0, 1],
    "tau": {"budget": "0.1", "vectors": 12},
    "latency": {"gpu_batches": [256, 1], "cpu_batches": [1, 32], "gpu_reps": 20, "cpu_reps": 7},
}

SMOKE = {
    **FULL,
    "model": "resnet20", "throughput_models": ["resnet20"],
    "data": {"name": "synthetic", "val_size": 256, "limit": None, "options": {"image_size": 16}},
    "threads": 1,
    "throughput": {"batch_size": 32, "warmup": 1, "steps": 2, "repeats": 1, "loader_workers": 0},
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "max_steps": 4},
    "candidates": 2,
    "eval": {"fine_tune_steps": 2, "bn_batches": 2, "batch_size": 32},
    "dmcp": {"steps": 2, "batch_size": 32},
    "concurrency": {"workers": [2], "candidates_per_worker": 2, "budget": "0.1", "method": "random"},
    "sweep": [{"fine_tune_steps": 0, "bn_batches": 2, "cudnn_benchmark": False},
              {"fine_tune_steps": 2, "bn_batches": 2, "cudnn_benchmark": False},
              {"fine_tune_steps": 2, "bn_batches": 2, "cudnn_benchmark": True, "vectors": 2}],
    "tau": {"budget": "0.1", "vectors": 4},
    "latency": {"gpu_batches": [256, 1], "cpu_batches": [1, 8], "gpu_reps": 5, "cpu_reps": 3},
}

# Part 3's settings live apart from FULL / SMOKE and are stored under "settings_part3", not
# "settings": results files written before part 3 existed (experiments/results/proof-h200.json)
# hold FULL's keys only, and main() refuses a file whose stored settings differ, so part 3's keys
# in FULL would make every such file unresumable. Each dict is checked on its own: "settings"
# always, "settings_part3" when part 3 may run and a run has stored it (an old file gains it on
# its first run that may reach part 3; --part 1 and --part 2 never write it).
PART3_FULL = {
    "criteria": {"rules": ["l1", "bn_gamma", "random", "hrank", "activation", "apoz", "reconstruct"]},
    "producers": {"budgets": ["0.4", "0.1"], "methods": ["hrank", "activation", "ssl"],
                  "options": {"ssl": {"steps": 100, "batch_size": 64, "bisections": 6}}},
}

PART3_SMOKE = {
    **PART3_FULL,
    # One budget keeps the smoke run (and its test) short; the loop over budgets is the same code.
    "producers": {**PART3_FULL["producers"], "budgets": ["0.1"],
                  "options": {"ssl": {"steps": 2, "batch_size": 32, "bisections": 1}}},
}

AIMS = {"fast_img_s": 60000, "base_acc": 0.88, "cand_per_min": 50, "cand_per_min_fast": 100, "tau": 0.5,
        "winner_pp": 0.5}

# The second proof (--config v2): where searched widths should beat a uniform multiplier, if
# anywhere: compact models at low budgets, with enough candidates, every winner retrained with
# three seeds and compared per seed with uniform-fill, and a tau test over vectors that differ
# on purpose (lopsided allocations) instead of random draws alone. Settings are stored under
# "settings" like the first proof's, so that neither config resumes a results file of the other.
V2_FULL = {
    "config": "v2",
    # MobileNetV2's smallest network is at 0.074 of its MACs (min_ratio 0.1): its 0.05 is
    # recorded as unreachable, with the smallest reachable ratio.
    "models": {"mobilenetv2": ["0.3", "0.1", "0.05"], "resnet56": ["0.3", "0.1", "0.05"], "vgg16": ["0.1"]},
    "data": FULL["data"], "test_limit": None, "threads": None,
    "train": FULL["train"],
    "eval": FULL["eval"], "search_cudnn_benchmark": False,
    "searched": ["abc", "tpe"], "candidates": 160, "scorers": 4,  # scorer processes per searched study
    "one_shot": ["uniform", "uniform-fill", "l1-global", "slimming", "dmcp", "hrank"],
    "dmcp": FULL["dmcp"],
    "seeds": [0, 1, 2], "reference": "uniform-fill",
    # Per model and budget: every winner, then the lopsided allocations (a profile over the groups
    # in network order, scaled onto the budget), then random equal-MACs draws up to `vectors`.
    "tau": {"vectors": 24, "seeds": [0, 1], "bootstrap": 2000,
            "lopsided": {"early-heavy": [2.0, 4.0], "late-heavy": [2.0, 4.0], "bottleneck": [0.5, 0.25]}},
    # The proxies scored on every tau vector, each timed per candidate, each ranked against both
    # finishes. "evaluator": the search's evaluator with these fine-tune steps (0: BatchNorm
    # re-estimation only). "halving": Optuna's SuccessiveHalvingPruner over a trial's reports after
    # min_steps x reduction_factor^k fine-tune steps (k < rungs): every vector gets the cheapest
    # score, the top fraction goes on. "scratch": the candidate built freshly initialised, trained
    # `epochs` epochs of the retrain recipe, scored on validation (what Scratch-E measures); its seed
    # is none of the finishes' seeds, so that it shares no initialisation with them.
    "proxies": {"bn-only": {"kind": "evaluator", "fine_tune_steps": 0},
                "ft-25": {"kind": "evaluator", "fine_tune_steps": 25},
                "ft-100": {"kind": "evaluator", "fine_tune_steps": 100},
                "ft-400": {"kind": "evaluator", "fine_tune_steps": 400},
                "multi-fidelity": {"kind": "halving", "min_steps": 25, "reduction_factor": 4, "rungs": 3, "seed": 0},
                "scratch-2ep": {"kind": "scratch", "epochs": 2, "seed": 100}},
    # The second finish: every tau vector fine-tuned from the weights it inherits (autoprune.finetune),
    # cosine from lr 0.01, as `autoprune finetune` does by default.
    "finetune": {"epochs": 5, "lr": 0.01, "seeds": [0]},
    "base_epochs": None,  # the base trains as long as the retrains
}

V2_SMOKE = {
    **V2_FULL,
    "models": {"resnet20": ["0.3"]},
    "data": {"name": "synthetic", "val_size": 64, "limit": None,
             "options": {"image_size": 16, "n_train": 256, "n_test": 64}},
    "threads": 1,
    "train": {"epochs": 1, "batch_size": 64, "lr": 0.05, "max_steps": 2},
    "eval": SMOKE["eval"],
    # One searched method: each spawns a scorer process, seconds of start-up on a CPU; tpe and the
    # rest of the one-shot methods run the same code (and the first proof's smoke runs them all).
    "searched": ["abc"], "candidates": 2, "scorers": 2,
    "one_shot": ["uniform", "uniform-fill"],
    "dmcp": SMOKE["dmcp"],
    "tau": {"vectors": 5, "seeds": [0, 1], "bootstrap": 200, "lopsided": {"early-heavy": [2.0]}},
    "proxies": {"bn-only": {"kind": "evaluator", "fine_tune_steps": 0},
                "ft-2": {"kind": "evaluator", "fine_tune_steps": 2},
                "multi-fidelity": {"kind": "halving", "min_steps": 1, "reduction_factor": 2, "rungs": 2, "seed": 0},
                "scratch-1": {"kind": "scratch", "epochs": 1, "seed": 100}},
    "finetune": {"epochs": 1, "lr": 0.01, "seeds": [0]},
}

# The CPU study (--config v2-cpu): the v2 stages at CPU scale, for when no GPU is at hand. Sized from
# step times measured on a 2-core EPYC VM busy with other jobs (torch 2.14.1, batch 128: about 85
# ResNet-20 training images per CPU-second and 20 of MobileNetV2, whose depthwise convolutions
# train slowly on a CPU). Run there at nice 10 (BENCHMARKS, "Proof v2 (CPU study)"), ResNet-20's
# base and two budgets took 69 minutes (base 9, budgets 28 and 32), the same one-epoch retrain 8 s
# with the cores free and up to 165 s beside the other jobs; each MobileNetV2 budget costs about
# four times one of ResNet-20's. ResNet-20 comes first, so a sitting that ends early leaves its
# cells whole. Data: 10,000 CIFAR-10 training images (9,000 to train, 1,000 to validate;
# --data-dir) and 2,000 test images. Training is one epoch (70 steps, one-cycle) from scratch, the
# base four; the candidates' fine-tunes scale the GPU's 25/100/400 steps at batch 512 to 2/8/32 at
# batch 128 (the search's evaluator: 8 steps on 4 BatchNorm batches); the from-scratch proxy is a
# quarter of the from-scratch finish (18 steps), the fine-tuned finish one epoch at lr 0.01.
V2_CPU = {
    **V2_FULL,
    "config": "v2-cpu",
    "models": {"resnet20": ["0.1", "0.3"], "mobilenetv2": ["0.1", "0.3"]},
    "data": {"name": "cifar10", "val_size": 1000, "limit": 9000, "options": {}}, "test_limit": 2000,
    "threads": None,
    "train": {"epochs": 1, "batch_size": 128, "lr": 0.05, "max_steps": None}, "base_epochs": 4,
    "eval": {"fine_tune_steps": 8, "bn_batches": 4, "batch_size": 128},
    "searched": ["abc", "tpe"], "candidates": 8, "scorers": 1,
    "one_shot": ["uniform", "uniform-fill", "l1-global"],
    "seeds": [0, 1],
    "tau": {"vectors": 8, "seeds": [0, 1], "bootstrap": 2000,
            "lopsided": {"early-heavy": [4.0], "late-heavy": [4.0], "bottleneck": [0.25]}},
    "proxies": {"bn-only": {"kind": "evaluator", "fine_tune_steps": 0},
                "ft-2": {"kind": "evaluator", "fine_tune_steps": 2},
                "ft-8": {"kind": "evaluator", "fine_tune_steps": 8},
                "ft-32": {"kind": "evaluator", "fine_tune_steps": 32},
                "multi-fidelity": {"kind": "halving", "min_steps": 2, "reduction_factor": 4, "rungs": 3, "seed": 0},
                "scratch-18": {"kind": "scratch", "epochs": 1, "max_steps": 18, "seed": 100}},
    "finetune": {"epochs": 1, "lr": 0.01, "seeds": [0]},
}

# The part of v2 that fits one GPU sitting of about 15 minutes (--config v2-short): the cell where
# the literature puts the win, MobileNetV2 at 0.1, with 150 candidates per search and 3 retrain
# seeds as v2 asks, but 10-epoch retrains, 12 tau vectors (the five winners, three lopsided, four
# random), the one-shot baselines that need no training of their own, the proxies at the GPU's
# scale without ft-400, and a 2-epoch fine-tuned finish; in two parts, both shorter than 8 minutes
# by the estimate (BENCHMARKS, "Proof v2"): 1 = base, searches, proxies; 2 = retrains, tau seeds,
# fine-tunes. Estimated from the first proof's H200 speeds, not measured.
V2_SHORT = {
    **V2_FULL,
    "config": "v2-short",
    "models": {"mobilenetv2": ["0.1"]},
    "train": {**FULL["train"], "epochs": 10}, "base_epochs": 15,
    "candidates": 150,
    "one_shot": ["uniform", "uniform-fill", "l1-global"],
    "tau": {**V2_FULL["tau"], "vectors": 12, "lopsided": {"early-heavy": [4.0], "late-heavy": [4.0], "bottleneck": [0.25]}},
    "proxies": {name: spec for name, spec in V2_FULL["proxies"].items() if name != "ft-400"}
    | {"scratch-1ep": {"kind": "scratch", "epochs": 1, "seed": 100}},
    "finetune": {**V2_FULL["finetune"], "epochs": 2},
    "sittings": [["base", "search", "proxy", "proxies"], ["retrain", "tau", "finetune"]],
}
del V2_SHORT["proxies"]["scratch-2ep"]

CONFIGS = {"v2": (V2_FULL, V2_SMOKE), "v2-cpu": (V2_CPU, V2_SMOKE),
           "v2-short": (V2_SHORT, {**V2_SMOKE, "sittings": V2_SHORT["sittings"]})}
# --config: (settings, --smoke settings)


def rehearsal(settings: dict) -> dict:
    """``settings`` (a v2 config) with their counts kept (models, budgets, candidates per search,
    scorer processes, tau vectors, seeds, every proxy and finish) and every training and score cut
    to a few steps on synthetic 32 x 32 images (--rehearse): a GPU plan run to its end on a CPU, in
    minutes, so that a GPU sitting is not spent finding a fault. Its accuracies mean nothing."""
    cut = {"evaluator": lambda spec: {**spec, "fine_tune_steps": min(spec["fine_tune_steps"], 2)},
           "halving": lambda spec: {**spec, "min_steps": 1, "reduction_factor": 2},
           "scratch": lambda spec: {**spec, "epochs": 1, "max_steps": 2}}
    # CIFAR's size, not the smoke runs' 16 x 16: VGG16's five poolings leave nothing of those.
    data = {**V2_SMOKE["data"], "options": {**V2_SMOKE["data"]["options"], "image_size": 32}}
    return {**settings, "data": data, "test_limit": None, "threads": 1, "train": V2_SMOKE["train"],
            "base_epochs": None, "eval": V2_SMOKE["eval"], "dmcp": V2_SMOKE["dmcp"],
            "proxies": {name: cut[spec["kind"]](spec) for name, spec in settings["proxies"].items()},
            "finetune": {**settings["finetune"], "epochs": 1}, "rehearsal": True}


def v2_parts(settings: dict) -> dict:
    """--part of a v2 run: the stages each part runs, named STAGE/MODEL[/BUDGET[/sSEED]]. Per model
    its base, then per budget: a search part (the searches, then the tau vectors), a proxy part
    (every proxy on the tau vectors), a retrain part (every seed), a part per tau seed and a
    fine-tune part (every fine-tune seed). A model's parts and a cell's come together, so a run
    stopped early leaves whole cells behind; each part is sized to stay under 8 minutes on one H200
    (estimated from the first proof's speeds: --budget-minutes guards it). Settings with
    ``sittings`` (lists of stage kinds) have one part per sitting instead, in that order."""
    parts = []
    for m, budgets in settings["models"].items():
        parts.append([f"base/{m}"])
        for b in budgets:
            parts += [[f"search/{m}/{b}", f"proxy/{m}/{b}"], [f"proxies/{m}/{b}"],
                      [f"retrain/{m}/{b}/s{s}" for s in settings["seeds"]]]
            parts += [[f"tau/{m}/{b}/s{s}"] for s in settings["tau"]["seeds"]]
            parts += [[f"finetune/{m}/{b}/s{s}" for s in settings["finetune"]["seeds"]]]
    if settings.get("sittings"):  # a few long parts instead: each one's kinds of stage, every cell's
        names = [name for part in parts for name in part]
        parts = [[n for n in names if n.split("/")[0] in kinds] for kinds in settings["sittings"]]
    out = {i + 1: tuple(part) for i, part in enumerate(parts)}
    return {None: tuple(name for part in parts for name in part), **out}


def v2_needs(name: str) -> list[str]:
    """The stages a v2 stage reads: a search its model's base, the proxies, the retrains and the
    fine-tunes their cell's search or tau vectors, a tau seed the vectors and that seed's retrains
    (whose vectors it does not train again)."""
    kind, model, *rest = name.split("/")
    cell = "/".join([model, *rest[:1]])
    if kind == "tau":
        return [f"proxy/{cell}", f"retrain/{cell}/{rest[-1]}"]
    return {"base": [], "search": [f"base/{model}"], "proxy": [f"search/{cell}"], "retrain": [f"search/{cell}"],
            "proxies": [f"proxy/{cell}"], "finetune": [f"proxy/{cell}"]}[kind]
