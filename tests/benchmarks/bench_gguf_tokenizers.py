"""How transformers' GGUF reader builds the offline models' tokenizers, in the installed version.

Run once per environment (one per transformers version):

    python tests/benchmarks/bench_gguf_tokenizers.py --models smollm2-135m gemma3-270m

For each model: the tokenizer transformers builds from the GGUF file, saved and reloaded (what a
conversion keeps); evop-hub's verdict on it (``gguf_tokenizer_problem``, the check that refuses a
conversion); the first pieces of its probe sentence; and the mean next-token NLL of the file's own
weights, loaded by transformers, on the first 512 tokens of WikiText-2 test as that tokenizer cuts
them. A tokenizer read wrongly shows there: the weights are the same in every version.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from evop_hub.models.gguf import PROBE, gguf_bos, gguf_tokenizer_problem
from evop_hub.models.offline import locate_offline_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--data", default="../shared/data/wikitext-2/test.txt")
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()
    text = open(args.data).read()[: 40 * args.tokens]
    for name in args.models:
        path = locate_offline_model(name)
        with tempfile.TemporaryDirectory() as saved:
            AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).save_pretrained(saved)
            tokenizer = AutoTokenizer.from_pretrained(saved)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        ids = tokenizer(text, return_tensors="pt").input_ids[:, : args.tokens]
        with torch.no_grad():
            nll = model(ids, labels=ids).loss.item()
        print(
            json.dumps(
                {
                    "transformers": transformers.__version__,
                    "model": name,
                    "problem": gguf_tokenizer_problem(tokenizer, *gguf_bos(path)),
                    "probe_pieces": tokenizer.convert_ids_to_tokens(tokenizer(PROBE).input_ids)[:8],
                    "wikitext2_test_nll": round(nll, 4),
                    "tokens": ids.shape[1],
                },
                ensure_ascii=False,
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
