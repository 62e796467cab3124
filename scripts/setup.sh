#!/usr/bin/env bash
# Creates .venv in the project root and installs the project with its test tools; a second call with an unchanged
# pyproject.toml does nothing. Needs Python >= 3.10 and the package registries only.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch/torchvision first, pinned to the releases this project is tested with (on our machines: a local wheel)
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[test,viz]"
rm -f .venv/.installed-*
touch "$stamp"
