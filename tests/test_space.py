"""Search space: allowed widths, encodings, overrides."""

import numpy as np
import pytest

from autoprune.errors import SpaceError, WidthError
from autoprune.models import create_model
from autoprune.space import SearchSpace, SpaceConfig, allowed_widths, load_space_config


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
    from autoprune.space import SEARCH_SPACES_DIR

    files = sorted(SEARCH_SPACES_DIR.glob("*.yaml"))
    assert files, "search_spaces/ ships per-model files"
    for f in files:
        name = f.stem.replace("tv_", "tv:", 1)
        config = load_space_config(name)
        assert isinstance(config, SpaceConfig)
        space = SearchSpace.from_model(create_model(name), (3, 32, 32), model_name=name)
        assert len(space) > 0


def test_to_dict_from_dict_round_trip():
    model = create_model("mobilenetv2")
    space = SearchSpace.from_model(model, (3, 32, 32), round_to=4)
    again = SearchSpace.from_dict(space.to_dict(), space.graph)
    assert again.choices == space.choices and again.free == space.free
    other = SearchSpace.from_model(create_model("resnet20"), (3, 32, 32))
    with pytest.raises(SpaceError):
        SearchSpace.from_dict(space.to_dict(), other.graph)
