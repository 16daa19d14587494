"""The Space's Gradio app (spaces/app.py), served on loopback and driven in headless Chromium.

Debian's chromium (/usr/bin/chromium, installed by .ci/run) is driven through Playwright's
Python client. The check is behavioural: after typing a prompt and clicking Generate, each
output box holds exactly what that model's greedy ``generate`` produces for the prompt,
computed independently here. Unverified: the app's build and run on Hugging Face Spaces
(a real Space would download both models from the Hub; here they are local directories).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from ..conftest import skip_or_fail

CHROMIUM = Path("/usr/bin/chromium")
PROMPT = "the cat sat on"


def greedy(path: Path, prompt: str, max_new_tokens: int = 64) -> str:
    """Reference: plain transformers greedy decoding, as a user would write it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_space_app_side_by_side_in_chromium(make_output, tmp_path, monkeypatch):
    if not CHROMIUM.exists():
        skip_or_fail(f"Debian chromium not found at {CHROMIUM}")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed")
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from evop_hub.hub import build_local_demo

    out = make_output()  # the record's source is the local dense directory tmp/base
    demo = build_local_demo(out)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#generate").click()
            expect(page.locator("#speed")).to_contain_text("tokens/s", timeout=120_000)
            pruned = page.locator("#pruned-output textarea").input_value()
            base = page.locator("#base-output textarea").input_value()
            speed = page.locator("#speed").inner_text()
            browser.close()
    finally:
        demo.close()
    expected_pruned, expected_base = greedy(out, PROMPT), greedy(tmp_path / "base", PROMPT)
    assert expected_pruned != expected_base  # the two boxes really show two different models
    assert pruned == expected_pruned
    assert base == expected_base
    assert "pruned:" in speed and "base:" in speed and "speedup" in speed


def test_space_command_serves_on_loopback(make_output, tmp_path):
    """`evop-hub space DIR` starts the same app on 127.0.0.1 (stopped by the test afterwards)."""
    import subprocess
    import sys
    import time
    import urllib.request

    out = make_output()
    port = free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "evop_hub.cli", "space", str(out), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, page = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert page is not None, proc.stdout.read() if proc.poll() is not None else "server did not start"
        assert "pruned-output" in page and "base-output" in page
    finally:
        proc.terminate()
        proc.wait(timeout=30)
