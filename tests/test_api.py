"""The notebook surface: every name ``clm_explore`` exports resolves to the object its module defines."""

from __future__ import annotations

import importlib

import clm_explore


def test_every_public_name_resolves_to_its_module_object():
    for name in clm_explore.__all__:
        module = importlib.import_module(clm_explore._EXPORTS[name])
        assert getattr(clm_explore, name) is getattr(module, name), name
