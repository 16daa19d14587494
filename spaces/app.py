"""Try a model pruned by evop-hub next to the model it came from.

This file is uploaded as-is to a Hugging Face Space by `evop-hub push`, so it depends only
on transformers, torch and gradio (evop-hub is not installed there). It reads which models
to serve from ``evop_space.json`` next to it, and what was removed from the pruned repo's
``evop_pruning.json``. Set an ``HF_TOKEN`` secret when either model is private or gated.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import gradio as gr
import torch
from huggingface_hub import hf_hub_download
from transformers import AutoModelForCausalLM, AutoTokenizer

CONFIG_NAME = "evop_space.json"
RECORD_NAME = "evop_pruning.json"


def read_record(model: str, revision: str | None = None, token: str | None = None) -> dict:
    """The pruning record from a local output directory or from the pruned repo on the Hub."""
    local = Path(model) / RECORD_NAME
    path = local if local.is_file() else hf_hub_download(model, RECORD_NAME, revision=revision, token=token)
    return json.loads(Path(path).read_text())


def device() -> str:
    """The Space's GPU when it has one (paid GPU hardware), else its CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load(name: str, revision: str | None = None, token: str | None = None, trust_remote_code: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, token=token)
    model = AutoModelForCausalLM.from_pretrained(
        name, revision=revision, token=token, dtype="auto", trust_remote_code=trust_remote_code
    )
    return model.to(device()).eval(), tokenizer


def encode(tokenizer, prompt: str, chat: bool) -> torch.Tensor:
    if chat and tokenizer.chat_template:
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
    return tokenizer(prompt, return_tensors="pt").input_ids


@torch.inference_mode()
def generate(model, tokenizer, prompt: str, max_new_tokens: int, sample: bool, temperature: float, chat: bool):
    """Text continuation and decoding speed (new tokens per second, prompt included in the time)."""
    input_ids = encode(tokenizer, prompt, chat).to(model.device)
    options = {"do_sample": True, "temperature": temperature} if sample else {"do_sample": False}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    start = time.perf_counter()
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=int(max_new_tokens),
        pad_token_id=pad,
        **options,
    )
    if input_ids.device.type == "cuda":
        torch.cuda.synchronize(input_ids.device)  # kernels still queued would otherwise fall outside the time
    seconds = time.perf_counter() - start
    new = out[0, input_ids.shape[1] :]
    return tokenizer.decode(new, skip_special_tokens=True), len(new) / seconds


def _number(value, digits: int = 2) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else "–"


def mask_markdown(record: dict) -> str:
    if record.get("sparsity_unit", "blocks") != "blocks":  # a width baseline: every block is kept
        sparsity = record.get("sparsity")
        removed = f"{sparsity:.0%} of its {record['sparsity_unit']} removed" if sparsity is not None else "pruned"
        return f"**Every block kept, {removed}** ({record.get('method', '')})."
    n, dropped = record["num_blocks"], set(record["dropped_blocks"])
    pattern = "".join("0" if i in dropped else "1" for i in range(n))
    before, after = record.get("parameters_before"), record.get("parameters_after")
    params = f"{after:,} parameters (from {before:,})" if before and after else ""
    return (
        f"**{n - len(dropped)} of {n} blocks kept** ({record.get('method', '')}). {params}\n\n"
        f"Dropped blocks (original numbering): `{sorted(dropped)}`\n\n"
        f"Blocks, original order (1 kept, 0 dropped): `{pattern}`"
    )


def scores_markdown(record: dict) -> str:
    scores = record.get("scores") or {}
    lines = []
    for corpus, entry in (scores.get("perplexity") or {}).items():
        entry = entry if isinstance(entry, dict) else {"pruned": entry}
        lines.append(f"| {corpus} | {_number(entry.get('dense'))} | {_number(entry.get('pruned'))} |")
    table = "| perplexity | base | pruned |\n|---|---|---|\n" + "\n".join(lines) if lines else ""
    loss = scores.get("calibration_loss")
    if isinstance(loss, dict):
        loss = f"{_number(loss.get('pruned'), 4)} (base: {_number(loss.get('dense'), 4)})"
    return "\n\n".join(x for x in [f"Calibration loss: {loss}" if loss is not None else "", table] if x)


def build_demo(
    model: str,
    base: str | None = None,
    revision: str | None = None,
    base_revision: str | None = None,
    token: str | None = None,
    trust_remote_code: bool = False,
) -> gr.Blocks:
    """Load both models once, then serve one prompt box and two outputs.

    SliceGPT checkpoints carry their own modeling code. It runs only with ``trust_remote_code``, which the
    user gives (`evop-hub space --trust-remote-code`, or `evop-hub push` into evop_space.json): never because
    the served folder's own record asks for it, as a downloaded folder could.
    """
    record = read_record(model, revision, token)
    pruned_model, pruned_tok = load(model, revision, token, trust_remote_code=trust_remote_code)
    base_model, base_tok = load(base, base_revision, token) if base else (None, None)
    kept = record["num_blocks"] - len(record["dropped_blocks"])

    def run(prompt, max_new_tokens, sample, temperature, chat):
        text, speed = generate(pruned_model, pruned_tok, prompt, max_new_tokens, sample, temperature, chat)
        report = f"pruned: {speed:.1f} tokens/s"
        base_text = ""
        if base_model is not None:
            base_text, base_speed = generate(base_model, base_tok, prompt, max_new_tokens, sample, temperature, chat)
            report += f" · base: {base_speed:.1f} tokens/s · speedup ×{speed / base_speed:.2f}"
        return text, base_text, report

    with gr.Blocks(title=f"{model} (evop-hub)") as demo:
        source = record.get("source_hub_id") or record.get("source_model")
        gr.Markdown(f"# {model}\nPruned with evop-hub from `{source}`.")
        gr.Markdown(mask_markdown(record))
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="prompt", scale=4)
            button = gr.Button("Generate", variant="primary", elem_id="generate", scale=1)
        with gr.Accordion("Generation settings", open=False):
            max_new_tokens = gr.Slider(1, 512, value=64, step=1, label="Max new tokens")
            sample = gr.Checkbox(False, label="Sample (off: greedy, same output every time)")
            temperature = gr.Slider(0.1, 2.0, value=0.7, label="Temperature (when sampling)")
            chat = gr.Checkbox(bool(pruned_tok.chat_template), label="Use the chat template")
        with gr.Row():
            out_pruned = gr.Textbox(label=f"Pruned ({kept} blocks)", lines=8, elem_id="pruned-output")
            out_base = gr.Textbox(
                label=f"Base ({record['num_blocks']} blocks)" if base_model is not None else "Base (not loaded)",
                lines=8,
                elem_id="base-output",
            )
        speed = gr.Markdown(elem_id="speed")
        gr.Markdown(scores_markdown(record))
        inputs = [prompt, max_new_tokens, sample, temperature, chat]
        button.click(run, inputs, [out_pruned, out_base, speed])
        prompt.submit(run, inputs, [out_pruned, out_base, speed])
    return demo


def main() -> None:
    config = json.loads(Path(__file__).with_name(CONFIG_NAME).read_text())
    demo = build_demo(
        config["model"],
        base=config.get("base"),
        revision=config.get("revision"),
        base_revision=config.get("base_revision"),
        token=os.environ.get("HF_TOKEN"),
        trust_remote_code=bool(config.get("trust_remote_code")),
    )
    demo.launch()


if __name__ == "__main__":
    main()
