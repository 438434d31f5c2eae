"""The notebooks run from top to bottom (their cells assert what they show)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files the notebook writes land in a scratch folder
    cells = json.loads(path.read_text())["cells"]
    code = [("".join(c["source"]), i) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    assert code
    namespace: dict = {}
    for source, i in code:
        exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
    assert (tmp_path / "quickstart-search" / "arch.json").exists()
