"""Build script for ood_zoo's optional C++/CUDA extensions (metadata lives in pyproject.toml).

Hybrid build:

* torch importable (``pip install --no-build-isolation -e .``): build ``ood_zoo.ops._C`` from the
  CPU sources, and ``ood_zoo.ops._C_cuda`` when torch has CUDA and ``CUDA_HOME`` is found, or
  ``FORCE_CUDA=1``;
* torch not importable (an isolated ``pip install .``, since torch is deliberately not a build
  requirement): a pure-Python package that uses the pure-torch reference kernels.

Environment: ``OOD_ZOO_NO_EXT=1`` skips every extension, ``FORCE_CUDA=1`` forces the CUDA one,
``OOD_ZOO_DEBUG=1`` compiles with ``-O0 -g``, ``MAX_JOBS`` caps ninja's parallel jobs,
``TORCH_CUDA_ARCH_LIST`` picks the GPU architectures (e.g. ``9.0``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = "csrc"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _sources(*patterns: str) -> list[str]:
    """Source files matching ``patterns`` under csrc/, relative to this file, sorted."""
    found = {p.relative_to(ROOT).as_posix() for pat in patterns for p in ROOT.glob(pat)}
    return sorted(found)


def _extensions() -> tuple[list, dict, list[str]]:
    """Return ``(ext_modules, cmdclass, config lines)`` for this environment."""
    if _env_flag("OOD_ZOO_NO_EXT"):
        return [], {}, ["extensions: none (OOD_ZOO_NO_EXT=1)"]
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        return [], {}, [f"extensions: none (pure Python: torch is not importable: {exc})"]

    debug = _env_flag("OOD_ZOO_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    include_dirs = [str(ROOT / CSRC)]
    cpu = cpp_extension.CppExtension(
        "ood_zoo.ops._C",
        _sources(f"{CSRC}/*.cpp", f"{CSRC}/cpu/*.cpp"),
        include_dirs=include_dirs,
        extra_compile_args={"cxx": [*opt, "-std=c++20", "-fopenmp"]},
        extra_link_args=["-fopenmp"],
    )
    ext_modules = [cpu]

    force_cuda = _env_flag("FORCE_CUDA")
    cuda_home = cpp_extension.CUDA_HOME
    build_cuda = bool(torch.version.cuda and cuda_home) or force_cuda
    if build_cuda:
        ext_modules.append(
            cpp_extension.CUDAExtension(
                "ood_zoo.ops._C_cuda",
                _sources(f"{CSRC}/cuda/*.cu", f"{CSRC}/cuda/*.cpp"),
                include_dirs=include_dirs,
                extra_compile_args={
                    "cxx": [*opt, "-std=c++20"],
                    "nvcc": [*opt, "-std=c++17", "-lineinfo"],
                },
            )
        )
    cuda_reason = (
        "FORCE_CUDA=1"
        if force_cuda
        else f"torch CUDA {torch.version.cuda}, CUDA_HOME={cuda_home}"
        if build_cuda
        else f"skipped: torch CUDA {torch.version.cuda}, CUDA_HOME={cuda_home}"
    )
    config = [
        f"torch {torch.__version__} ({torch.__file__})",
        f"ood_zoo.ops._C: {len(cpu.sources)} sources, flags {' '.join(opt)} -fopenmp",
        f"ood_zoo.ops._C_cuda: {'built' if build_cuda else 'not built'} ({cuda_reason})",
        f"arch list: {os.environ.get('TORCH_CUDA_ARCH_LIST', '(torch default)')}, "
        f"MAX_JOBS={os.environ.get('MAX_JOBS', '(ninja default)')}",
    ]
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return ext_modules, {"build_ext": build_ext}, config


ext_modules, cmdclass, config = _extensions()
print("ood_zoo build config:\n  " + "\n  ".join(config), file=sys.stderr)
setup(ext_modules=ext_modules, cmdclass=cmdclass)
