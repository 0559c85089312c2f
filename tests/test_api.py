"""The notebook surface: every name ``clm_explore`` exports resolves to the object its module defines."""

from __future__ import annotations

import importlib

import clm_explore


def test_every_public_name_resolves_to_its_module_object():
    for name in clm_explore.__all__:
        module = importlib.import_module(clm_explore._EXPORTS[name])
        assert getattr(clm_explore, name) is getattr(module, name), name


def test_predict_takes_one_string_a_result_or_no_text(tiny_data, tmp_path):
    from dataclasses import replace

    import pytest

    result = clm_explore.finetune(tiny_data, replace(clm_explore.FinetuneConfig(method="head"), epochs=1),
                                  tmp_path / "run", source="tiny-random")
    one = clm_explore.predict(result, "my card has not arrived")  # the FinetuneResult, one string: one row
    assert one.shape == (1, len(tiny_data.labels)) and list(one.index) == ["my card has not arrived"]
    assert one.equals(clm_explore.predict(tmp_path / "run", ["my card has not arrived"]))
    none = clm_explore.predict(result, [])
    assert none.shape == (0, len(tiny_data.labels)) and list(none.columns) == list(one.columns)
    with pytest.raises(TypeError, match=r"texts\[1\] is float"):
        clm_explore.predict(result, ["fine", float("nan")])
