"""The loss benchmark, tiny: every loss variant this machine runs must give the runner's numbers, or the
speedups it reports would compare different computations."""

from __future__ import annotations

import pytest
from bench_head import main

pytestmark = pytest.mark.integration


def test_every_supported_loss_variant_keeps_the_runners_numbers(tmp_path):
    result = main(
        [
            "--model",
            "smollm2-135m",
            "--windows",
            "3",
            "--seq-len",
            "48",
            "--batch-size",
            "2",
            "--repeats",
            "1",
            "--out",
            str(tmp_path / "head"),
        ]
    )
    assert "unsupported" not in result["variants"]["log_softmax_dtype"]  # plain torch: runs everywhere
    for name, row in result["variants"].items():
        if "unsupported" not in row:
            assert row["max_rel_diff"] <= 1e-6, name
    assert (tmp_path / "head.md").read_text().count("\n| ") == 3 + 1 + 4 + 1
