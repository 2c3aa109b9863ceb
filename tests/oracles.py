"""Peer libraries as test oracles: modules of their unpacked wheels, never installed.

``make test`` downloads pytorch-ood 0.4.0, oodeel 0.4.0 and lm-polygraph 0.7.0 without their
dependencies and unpacks each into ``.oracles/<name>`` (or ``OOD_ZOO_PYTORCH_OOD``,
``OOD_ZOO_OODEEL``, ``OOD_ZOO_LM_POLYGRAPH`` name the folder holding the package). Their package
``__init__`` modules import heavy back ends (torchvision, tensorflow, the whole model stack), so
the packages are stand-ins with the wheel's path and only the modules a test names are imported.
Without the wheel a parity test skips, or fails under ``OOD_ZOO_REQUIRE_ORACLES=1`` (``make
test`` sets it).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

ORACLES = Path(__file__).resolve().parents[1] / ".oracles"
#: peer name -> (environment variable, top-level package)
PEERS = {
    "pytorch-ood": ("OOD_ZOO_PYTORCH_OOD", "pytorch_ood"),
    "oodeel": ("OOD_ZOO_OODEEL", "oodeel"),
    "lm-polygraph": ("OOD_ZOO_LM_POLYGRAPH", "lm_polygraph"),
}


def unavailable(reason: str) -> None:
    """Skip, or fail where ``OOD_ZOO_REQUIRE_ORACLES=1``."""
    if os.environ.get("OOD_ZOO_REQUIRE_ORACLES") == "1":
        pytest.fail(f"{reason} (OOD_ZOO_REQUIRE_ORACLES=1; run `make .oracles/.unpacked`)")
    pytest.skip(reason)


@contextmanager
def peer_modules(peer: str, packages: Sequence[str], modules: Sequence[str]
                 ) -> Iterator[list[ModuleType]]:
    """``modules`` of ``peer``'s unpacked wheel, imported through stand-ins for ``packages``.

    Every module of the peer imported meanwhile is removed from ``sys.modules`` after.
    """
    variable, top = PEERS[peer]
    root = Path(os.environ.get(variable, ORACLES / peer))
    if not (root / top).is_dir():
        unavailable(f"{peer} is not unpacked at {root}")
    before = set(sys.modules)
    for name in packages:
        package = types.ModuleType(name)
        package.__path__ = [str(root.joinpath(*name.split(".")))]
        sys.modules[name] = package
    try:
        yield [importlib.import_module(name) for name in modules]
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] == top:
                del sys.modules[name]
