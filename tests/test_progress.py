"""`--quiet`: one switch hides evop-hub's bars and those its libraries draw."""

from __future__ import annotations

import subprocess
import sys


def test_silence_hides_every_bar_for_the_rest_of_the_process():
    script = (
        "from evop_hub.progress import bar, shown, silence\n"
        "list(bar(range(50), desc='before'))\n"
        "silence()\n"
        "list(bar(range(50), desc='after'))\n"
        "from huggingface_hub.utils import are_progress_bars_disabled\n"
        "from transformers.utils import logging\n"
        "assert are_progress_bars_disabled() and not logging.is_progress_bar_enabled() and not shown()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "before" in result.stderr and "after" not in result.stderr
