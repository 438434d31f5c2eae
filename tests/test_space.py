"""Search space: allowed widths, encodings, overrides."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

import autoprune
from autoprune.errors import SpaceError, WidthError
from autoprune.models import create_model
from autoprune.space import SEARCH_SPACES, SearchSpace, SpaceConfig, allowed_widths, load_space_config

PACKAGE_DIR = Path(autoprune.__file__).resolve().parent
SHIPPED = sorted(p.name for p in (PACKAGE_DIR / "search_spaces").glob("*.yaml"))


def _model_name(file_name: str) -> str:
    return Path(file_name).stem.replace("tv_", "tv:", 1)


def test_allowed_widths_round_to_multiples_of_8_for_wide_layers():
    w = allowed_widths(512, 0.1, 0.05, 8)
    assert w[-1] == 512 and w[0] == 56
    assert all(x % 8 == 0 for x in w)
    assert list(w) == sorted(set(w))


def test_narrow_layers_are_not_rounded_to_a_handful_of_choices():
    w = allowed_widths(16, 0.1, 0.05, 8)
    assert w[0] == 2 and w[-1] == 16 and len(w) > 8


def test_uniform_vector_is_in_the_space():
    space = SearchSpace.from_model(create_model("vgg16"), (3, 32, 32))
    for r in (0.1, 0.25, 0.5, 1.0):
        assert space.validate(space.uniform(r)) == space.uniform(r)
    assert space.uniform(1.0) == space.max_widths()


def test_encode_decode_round_trip():
    space = SearchSpace.from_model(create_model("resnet20"), (3, 32, 32))
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = space.sample(rng)
        x = space.encode(w)
        assert np.all((x > 0) & (x < 1))
        assert space.decode(x) == w
    assert space.decode(np.zeros(len(space))) == space.min_widths()
    assert space.decode(np.ones(len(space))) == space.max_widths()


def test_validate_rejects_wrong_length_and_disallowed_width():
    space = SearchSpace.from_model(create_model("resnet20"), (3, 32, 32))
    with pytest.raises(WidthError, match="entries"):
        space.validate(space.max_widths()[:-1])
    bad = list(space.max_widths())
    bad[3] = 17
    with pytest.raises(WidthError, match=space.names[3]):
        space.validate(bad)


def test_frozen_and_per_group_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("min_ratio: 0.5\nfrozen: ['features.0']\ngroups:\n  'features.3':\n    min_ratio: 0.25\n")
    space = SearchSpace.from_model(create_model("vgg16"), (3, 32, 32), space_file=path)
    assert "features.0" not in space.names
    by = dict(zip(space.names, space.choices))
    assert by["features.3"][0] == 16  # 25 % of 64
    assert by["features.7"][0] == 64  # 50 % of 128


@pytest.mark.parametrize("text,needle", [
    ("min_ratio: 2\n", "min_ratio"),
    ("bogus: 1\n", "unknown key"),
    ("frozen: ['nope.*']\n", "matches no channel group"),
    ("groups: [1, 2]\n", "groups"),
    ("min_ratio: [\n", "invalid YAML"),
    ("frozen: 5\n", "frozen"),
    ("groups:\n  conv1: {min_ratio: abc}\n", "groups\\['conv1'\\]"),
])
def test_bad_space_files(tmp_path, text, needle):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError, match=needle):
        SearchSpace.from_model(create_model("resnet20"), (3, 32, 32), space_file=path)


def test_shipped_search_space_files_are_valid():
    assert SHIPPED, "autoprune/search_spaces/ ships per-model files"
    assert "vgg16.yaml" in SHIPPED and "tv_resnet50.yaml" in SHIPPED
    assert not (PACKAGE_DIR.parent / "search_spaces").exists(), "the YAML moved into the package"
    for f in SHIPPED:
        name = _model_name(f)
        config = load_space_config(name)
        assert isinstance(config, SpaceConfig)
        space = SearchSpace.from_model(create_model(name), (3, 32, 32), model_name=name)
        assert len(space) > 0


@pytest.mark.parametrize("file_name", SHIPPED)
def test_packaged_yaml_is_the_space_it_describes(file_name):
    """load_space_config(model) reads the package resource and gives exactly that file's config."""
    resource = SEARCH_SPACES / file_name
    assert resource.is_file()
    expected = SpaceConfig.from_dict(yaml.safe_load(resource.read_text(encoding="utf-8")) or {})
    assert load_space_config(_model_name(file_name)) == expected


def test_per_model_yaml_settings_are_honoured():
    # vgg16.yaml: defaults spelled out; round_to 8 on wide layers, down to 10 % of the width.
    vgg = SearchSpace.from_model(create_model("vgg16"), (3, 32, 32), model_name="vgg16")
    assert vgg.config == SpaceConfig(min_ratio=0.1, step=0.05, round_to=8)
    by = dict(zip(vgg.names, vgg.choices))
    assert by["features.40"][0] == 56 and all(w % 8 == 0 for w in by["features.40"])  # 512 wide
    # mobilenetv2.yaml freezes the head conv and starts at 20 %.
    mb = SearchSpace.from_model(create_model("mobilenetv2"), (3, 32, 32), model_name="mobilenetv2")
    default = SearchSpace.from_model(create_model("mobilenetv2"), (3, 32, 32))
    assert mb.config.frozen == ("features.20",) and mb.config.min_ratio == 0.2
    assert "features.20" not in mb.names and "features.20" in default.names
    # resnet56.yaml: round_to 2, residual stages keep at least a quarter.
    rn = SearchSpace.from_model(create_model("resnet56"), (3, 32, 32), model_name="resnet56")
    by = dict(zip(rn.names, rn.choices))
    assert rn.config.round_to == 2
    assert by["conv1"][0] == 4 and by["layer3.0.conv2"][0] == 16  # 25 % of 16 and of 64
    # tv:resnet50 is looked up as tv_resnet50.yaml.
    assert load_space_config("tv:resnet50").frozen == ("conv1",)
    # A model without a file gets the defaults.
    assert load_space_config("resnet20") == SpaceConfig()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built offline from a copy of the checkout (an in-tree build would write build/
    and *.egg-info into the working tree, racing concurrent runs)."""
    src = tmp_path_factory.mktemp("src")
    root = PACKAGE_DIR.parent
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, src / name)
    shutil.copytree(PACKAGE_DIR, src / "autoprune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=120, env=env, cwd=src)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("autoprune-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_ships_every_search_space_yaml(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for f in SHIPPED:
            member = f"autoprune/search_spaces/{f}"
            assert member in names, f"{member} missing from {wheel.name}"
            assert z.read(member) == (PACKAGE_DIR / "search_spaces" / f).read_bytes()


def test_installed_wheel_searches_the_same_space(wheel, tmp_path):
    """The wheel's own autoprune, not the checkout's, finds the per-model YAML."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = ("import autoprune, autoprune.space as s; "
            "print(autoprune.__file__); print(s.load_space_config('mobilenetv2').frozen)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    where, frozen = proc.stdout.strip().splitlines()[-2:]
    assert Path(where).resolve().is_relative_to(site.resolve())
    assert frozen == "('features.20',)"


def test_to_dict_from_dict_round_trip():
    model = create_model("mobilenetv2")
    space = SearchSpace.from_model(model, (3, 32, 32), round_to=4)
    again = SearchSpace.from_dict(space.to_dict(), space.graph)
    assert again.choices == space.choices and again.free == space.free
    other = SearchSpace.from_model(create_model("resnet20"), (3, 32, 32))
    with pytest.raises(SpaceError):
        SearchSpace.from_dict(space.to_dict(), other.graph)
