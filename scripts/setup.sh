#!/usr/bin/env bash
# Creates .venv in the project root and installs the project with its test tools; a second call with an unchanged
# pyproject.toml does nothing. Needs Python >= 3.10 and the package registries only.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# which faiss build: cpu (default) or gpu (CUDA 12). Both provide the module `faiss`: never both in one venv
faiss=${UNSEG_FAISS:-cpu}
case $faiss in
    cpu) other=faiss-gpu-cu12 ;;
    gpu) other=faiss-cpu ;;
    *) echo "UNSEG_FAISS must be cpu or gpu, got '$faiss'" >&2; exit 2 ;;
esac
stamp=.venv/.installed-$( (cat pyproject.toml; echo "$faiss") | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch/torchvision first, pinned to the releases this project is tested with (on our machines: a local wheel)
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip uninstall --quiet --yes "$other" 2>/dev/null || true
.venv/bin/python -m pip install --quiet -e ".[$faiss,test,viz]"
rm -f .venv/.installed-*
touch "$stamp"
