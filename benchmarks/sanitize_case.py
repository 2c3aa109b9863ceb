"""A tiny CUDA workload for ``compute-sanitizer --tool memcheck`` (run by gpu_check.sh).

Calls the ext kernels on small edge shapes: the tensor-core kNN tiles (bf16, fp16; d not a
multiple of 8 and of 16, N not a multiple of the tile), the SIMT tiles (fp32, fp64), the topk
fallback above the fused limit, and ``ops.mahalanobis``. Exits 1 if the CUDA extension is absent.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["OOD_ZOO_BACKEND"] = "ext"

from ood_zoo import ops
from ood_zoo.ops import extension


def main() -> int:
    """Run every case once; 0 when they all ran."""
    if not extension.cuda_available():
        print(f"sanitize_case: ood_zoo.ops._C_cuda unavailable ({extension.cuda_load_error()})")
        return 1
    torch.manual_seed(0)
    cases = [(5, 300, 7, 3, 128), (17, 257, 40, 257, 100), (3, 1200, 24, 1100, 500)]
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        for q_rows, n, d, k, tile in cases:
            q = torch.randn(q_rows, d, device="cuda").to(dtype)
            b = torch.randn(n, d, device="cuda").to(dtype)
            for metric in ("cosine", "l2"):
                torch.ops.ood_zoo.knn(q, b, k, metric, tile)
                torch.ops.ood_zoo.knn(q[:, 1:], b[:, 1:], k, metric, tile)  # unaligned rows
    q = torch.randn(40, 24, device="cuda")
    ops.knn(q, torch.randn(500, 24, device="cuda"), 5, chunk_rows=128)
    ops.mahalanobis(q, torch.randn(24, 20, device="cuda"), torch.randn(6, 24, device="cuda"))
    torch.cuda.synchronize()
    print("sanitize_case: all cases ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
