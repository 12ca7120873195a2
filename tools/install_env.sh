#!/usr/bin/env bash
# Installs the pinned stack of requirements.txt into a virtual environment (default .venv).
#
# Idempotent: a second run only checks that everything is there. detectron2 v0.6 comes from
# the `pb1-detectron2` source distribution (byte-identical Python files to upstream v0.6), built
# without its compiled extension `detectron2._C`; resnet_backbones provides a stand-in for it
# (see resnet_backbones/_compat.py), and a shim `detectron2/_C.py` that reaches it (step 4). Set
# VENV=path to install elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
REQ=requirements.txt

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }

pin() { grep -E "^$1==" "$REQ" | head -n1; }

# 1. torch first: detectron2's setup.py imports it.
"$PY" - "$(pin torch)" "$(pin torchvision)" <<'PYEOF' || pip_install "$(pin torch)" "$(pin torchvision)"
import importlib.metadata as md, sys
for req in sys.argv[1:]:
    name, version = req.split("==")
    if md.version(name).split("+")[0] != version:
        sys.exit(1)
PYEOF

# 2. detectron2 without its compiled ops.
D2_PIN=$(pin pb1-detectron2)
if ! "$PY" -c "import importlib.metadata as m; assert m.version('pb1-detectron2') == '${D2_PIN#*==}'" 2>/dev/null \
   && ! "$PY" -c "import detectron2" 2>/dev/null; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PY" -m pip download -q --no-deps --no-binary :all: --no-build-isolation "$D2_PIN" -d "$work"
  tar -xzf "$work"/*.tar.gz -C "$work"
  src=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)
  # An empty extension list builds a pure-Python package; `_C` is replaced at import time.
  grep -q 'ext_modules=get_extensions(),' "$src/setup.py"
  sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$src/setup.py"
  pip_install --no-deps --no-build-isolation "$src"
fi

# 3. Everything else (already-satisfied pins are skipped), then this package in editable mode.
grep -v -E '^(torch|torchvision|pb1-detectron2)==' "$REQ" > "$VENV/.requirements-rest.txt"
pip_install -r "$VENV/.requirements-rest.txt"
pip_install --no-deps --no-build-isolation -e .

# 4. Without the compiled ops, a tiny detectron2/_C.py that delegates to our stand-in, so that
# detectron2 imports before resnet_backbones too (resnet_backbones/_compat.py: install_c_shim;
# a detectron2 with its compiled _C, or a _C.py of its own, is left alone).
"$PY" -c "from resnet_backbones._compat import install_c_shim; p = install_c_shim(); p and print('installed', p)"
"$PY" -c "import detectron2.modeling, resnet_backbones"
