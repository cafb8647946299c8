#!/usr/bin/env bash
# Create the MONAI Label environment of docs/monailabel.md in folder $1: a venv that sees the bundle's packages
# (--system-site-packages: the CPU torch, monai, the editable bundle, pydicom 3) plus monailabel 0.8.5 and the
# pure-Python packages it imports, all --no-deps (monailabel's own requirements would pull torchvision and a CUDA
# torch, and pin numpy below 2), and the pydicom 3 shim for pydicom-seg. Needs the package registry.
set -euo pipefail
venv=${1:?folder for the venv}
python -m venv --system-site-packages "$venv"
"$venv/bin/pip" install -q --no-deps monailabel==0.8.5 anyio==4.11.0 bcrypt==5.0.0 cachetools==8.0.1 \
    dicomweb-client==0.61.2 diskcache==5.6.3 expiring-dict==1.1.2 expiringdict==1.2.2 fastapi==0.115.6 \
    girder-client==5.0.21 google-auth==2.62.2 h11==0.16.0 passlib==1.7.4 psutil==7.2.2 pyasn1_modules==0.4.2 \
    pydicom-seg==0.4.1 PyJWT==2.15.1 pynrrd==1.1.3 python-multipart==0.0.34 requests-toolbelt==1.0.0 \
    retrying==1.4.2 schedule==1.2.2 shapely==2.2.0 simpleitk==2.5.7 starlette==0.41.3 timeloop==1.0.2 \
    uvicorn==0.54.0 watchdog==7.1.0
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cat > "$site/_pydicom3_compat.py" <<'PY'
"""Venv-local shim: pydicom-seg 0.4.1 (imported by monailabel 0.8.5) imports ``pydicom._storage_sopclass_uids``,
removed in pydicom 3. The same UIDs live in ``pydicom.uid``; alias the old module name to it, lazily."""
import importlib.abc
import importlib.util
import sys

_NAME = "pydicom._storage_sopclass_uids"


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname == _NAME else None

    def create_module(self, spec):
        import pydicom.uid

        return pydicom.uid

    def exec_module(self, module):
        pass


sys.meta_path.append(_Alias())
PY
echo "import _pydicom3_compat" > "$site/_pydicom3_compat.pth"
# the venv must not carry a torch of its own (it would replace the bundle's CPU build)
if "$venv/bin/pip" list --path "$site" 2>/dev/null | grep -i -E "^(torch|torchvision|triton|nvidia)"; then
    echo "monailabel venv: a torch/CUDA package was installed into $venv" >&2
    exit 1
fi
