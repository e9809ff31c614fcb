#!/bin/sh
# Build-stage helper of our Python images: create /opt/venv (or add to an existing one) and install flops-mlops
# (with the extras given as $1, e.g. "fl" or "") pinned by /build/constraints.txt.
#   - /build/wheelhouse holds wheels  -> offline: pip install --no-index --find-links /build/wheelhouse
#   - /build/wheelhouse holds none    -> from the package index, our package built from /build/src
set -eu
extras="${1:-}"
spec_suffix=""
[ -n "$extras" ] && spec_suffix="[$extras]"
python3 -m venv /opt/venv
if ls /build/wheelhouse/*.whl >/dev/null 2>&1; then
    echo "pip-install: offline, from the wheelhouse ($(ls /build/wheelhouse/*.whl | wc -l) wheels)"
    /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /build/wheelhouse \
        --constraint /build/constraints.txt "flops-mlops${spec_suffix}"
else
    echo "pip-install: from the package index"
    /opt/venv/bin/pip install --no-cache-dir --constraint /build/constraints.txt "/build/src${spec_suffix}"
fi
/opt/venv/bin/pip check
