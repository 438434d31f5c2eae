"""The same seed gives the same width vectors: held against vectors recorded from an earlier
version of the package, so that restructuring the search cannot change what it finds."""

import json
from pathlib import Path

import pytest

import autoprune
from autoprune.api import StudyConfig

RECORDED = json.loads((Path(__file__).parent / "golden" / "seeded_search_vectors.json").read_text())


@pytest.mark.parametrize("key", sorted(RECORDED))
def test_seeded_search_finds_the_recorded_vectors(key, tmp_path):
    model, method = key.split("/")
    result = autoprune.search(model, budget=0.4, method=method, objective="synthetic", study=StudyConfig(trials=12),
                              out=tmp_path, seed=3)
    best, trials = RECORDED[key]
    assert result.widths == best
    assert [t["widths"] for t in result.trials] == trials
