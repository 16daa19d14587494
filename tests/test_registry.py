"""The one registry shape and the one method interface (issue 22, item 2): every name a user picks is looked up the
same way, fails in one line, and `evop-hub list` shows it; prune, compare and the tables read a method's attributes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from evop_hub.cli import app
from evop_hub.errors import EvopError
from evop_hub.methods import METHODS, BlockMethod, MethodJob, WidthMethod
from evop_hub.registry import REGISTRIES, Registry
from evop_hub.report.tables import _unit
from evop_hub.search import SEARCHES


def test_a_registry_is_a_mapping_whose_lookup_fails_in_one_line() -> None:
    colours = Registry("test-colours", "--colour", describe=str.upper)
    try:
        colours.register("red", "warm")
        colours.register("blue", "cold")
        assert dict(colours) == {"red": "warm", "blue": "cold"} and "red" in colours and len(colours) == 2
        assert colours.lookup("blue") == "cold" and colours.describe("red") == "WARM"
        with pytest.raises(EvopError, match=r"^unknown --colour 'green'; choose from red, blue$"):
            colours.lookup("green")
        with pytest.raises(ValueError, match="registered twice"):
            colours.register("red", "again")
    finally:
        del REGISTRIES["test-colours"]


def test_every_search_algorithm_and_width_baseline_is_one_method() -> None:
    blocks = {name for name, m in METHODS.items() if isinstance(m, BlockMethod)}
    width = {name for name, m in METHODS.items() if isinstance(m, WidthMethod)}
    assert blocks == set(SEARCHES) and width == {"wanda", "slicegpt"}
    assert all(METHODS[name].removes_blocks and METHODS[name].unit == "blocks" for name in blocks)
    assert not any(METHODS[name].removes_blocks for name in width)
    assert METHODS["evop"].searches and not METHODS["shortgpt"].searches and not METHODS["wanda"].searches
    assert [_unit(name) for name in ("evop", "wanda", "slicegpt")] == ["blocks", "weights", "hidden channels"]


@pytest.mark.parametrize(
    "name, default, k", [("evop", 0.2, 6), ("angular", 0.2, 6), ("wanda", 0.5, None), ("slicegpt", 0.25, None)]
)
def test_a_methods_default_sparsity_is_its_own(name: str, default: float, k: int | None) -> None:
    method = METHODS[name]
    assert method.default_sparsity == default
    if k is not None:  # 30 blocks at 20 %: ceil(0.2 x 30) = 6, as EvoP computes k
        assert method.blocks_to_drop(30, MethodJob(None, None)) == k


def test_evop_hub_list_prints_every_registry_and_refuses_an_unknown_kind() -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["list"])
    assert done.exit_code == 0, done.output
    for kind in ("methods", "corpora", "samplers", "fitnesses", "compensations", "presets", "offline-models"):
        assert f"{kind} (" in done.output
    assert "  slicegpt    hidden channels, one shot: " in done.output
    only = runner.invoke(app, ["list", "fitnesses"])
    assert only.exit_code == 0 and only.output.splitlines()[0] == "fitnesses (--fitness):"
    assert len(only.output.splitlines()) == 1 + 2  # nll and kl
    bad = runner.invoke(app, ["list", "colours"])
    assert bad.exit_code != 0 and isinstance(bad.exception, EvopError)
