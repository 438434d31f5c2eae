"""The public names of the package."""

import importlib

import autoprune


def test_search_is_the_function_even_after_its_subpackage_loads():
    importlib.import_module("autoprune.search.budget")
    importlib.import_module("autoprune.search.abc")
    assert callable(autoprune.search)
    assert autoprune.search.__module__ == "autoprune.api"


def test_all_names_resolve():
    for name in autoprune.__all__:
        assert getattr(autoprune, name) is not None, name
