"""One Markdown table from several ``bench_index.py`` JSON reports: KNNIndex against faiss.

    .venv/bin/python benchmarks/summarize_index.py results/bench_index/*.json

Per bank: the speed-up over faiss-cpu ``IndexFlatIP`` in the same run (batch Q = 2000 at k = 1
and 10, online Q = 1 and 16 at k = 10), the path KNNIndex took and its survivor rate, the
dense ``ops.knn``'s speed-up for comparison, and the build times (KNNIndex vs faiss ``add``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def cell(rows: list[dict], contender: str, regime: str, k: int, q: int) -> dict | None:
    for row in rows:
        if (row["contender"].startswith(contender) and row["regime"] == regime
                and row["k"] == k and row["Q"] == q):
            return row
    return None


def ratio(row: dict | None) -> str:
    if row is None:
        return "–"
    exact = "" if row.get("exact") else " (not exact)"
    return f"{row['x_faiss']:.2f}×{exact}"


def index_note(row: dict | None) -> str:
    if row is None:
        return "–"
    if row.get("index_path") == "pruned" and row.get("survivor_rate") is not None:
        return f"{100 * row['survivor_rate']:.1f}%"
    return str(row.get("index_path") or "?")


def main(paths: list[str]) -> None:
    print("| bank | rows × d | k=1 | k=10 | online Q=1 | online Q=16 | survivors k=1 / k=10 | "
          "dense ops.knn k=10 | build: KNNIndex / faiss add |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        report = json.loads(Path(path).read_text())
        bank = report["bank"]
        for result in report["results"]:
            rows, build = result["rows"], result["build_seconds"]
            k1 = cell(rows, "ood_zoo KNNIndex", "batch", 1, 2000)
            k10 = cell(rows, "ood_zoo KNNIndex", "batch", 10, 2000)
            on1 = cell(rows, "ood_zoo KNNIndex", "online", 10, 1)
            on16 = cell(rows, "ood_zoo KNNIndex", "online", 10, 16)
            dense = cell(rows, "ood_zoo ops.knn", "batch", 10, 2000)
            faiss_build = next((v for name, v in build.items() if name.startswith("faiss")), None)
            print(f"| {bank['name']} ({result['metric']}) | {bank['rows']:,} × {bank['dims']} | "
                  f"{ratio(k1)} | {ratio(k10)} | {ratio(on1)} | {ratio(on16)} | "
                  f"{index_note(k1)} / {index_note(k10)} | {ratio(dense)} | "
                  f"{build.get('ood_zoo KNNIndex', float('nan')):.2f} s / "
                  f"{faiss_build if faiss_build is None else f'{faiss_build:.2f} s'} |")


if __name__ == "__main__":
    main(sys.argv[1:])
