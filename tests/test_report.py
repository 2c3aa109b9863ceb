"""``ood-zoo report``: the HTML page and its Markdown twin from synthetic results directories."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ood_zoo import metrics
from ood_zoo.bench.plots import layer_heatmap, plot_layer_heatmap, slug
from ood_zoo.bench.report import ReportPaths, build_report
from ood_zoo.cli import main
from ood_zoo.errors import InputError

matplotlib_image = pytest.importorskip("matplotlib.image")

SETTINGS = ("far:a>b", "near:a>c")
BASE_AUROC = {"cosine": 0.912, "knn": 0.834, "msp": 0.651}
MAGENTA = (1.0, 0.0, 1.0)
BEST_GREEN = np.array([0xDA, 0xFB, 0xE1]) / 255  # the CSS background of a best cell


def _png(path: Path, color: tuple[float, float, float], size: tuple[int, int] = (60, 90)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    matplotlib_image.imsave(path, np.tile(np.array(color), (*size, 1)))


def _aggregate(setting: str, detector: str, auroc: float, **keys: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"setting": setting, **keys, "detector": detector,
                           "kind": setting.split(":")[0], "id": "a", "ood": setting[-1],
                           "n_seeds": 3, "n_errors": 0}
    for name, mean, std in (("auroc", auroc, 0.011), ("fpr95", 1 - auroc, 0.022),
                            ("aupr_in", auroc - 0.05, 0.033)):
        row |= {name: mean, f"{name}_std": std, f"{name}_pm": f"{mean:.3f} ± {std:.3f}"}
    return row | {"error": None}


def _bench(directory: Path, *, description: str = "A synthetic suite", fine_tuned: bool = False
           ) -> dict[str, Any]:
    """Write ``directory/results.json`` (format ood_zoo.bench) and its plots; return it."""
    table = []
    for i, setting in enumerate(SETTINGS):
        for detector, base in BASE_AUROC.items():
            if fine_tuned:
                table.append(_aggregate(setting, detector, base - 0.1 * i, variant="zero-grad",
                                        shots=0, id_accuracy=0.5))
                table.append(_aggregate(setting, detector, base - 0.1 * i + 0.05,
                                        variant="generative", shots=16, id_accuracy=0.873))
            else:
                table.append(_aggregate(setting, detector, base - 0.1 * i))
    sweep = [{**_aggregate(s, d, 0.5 + 0.11 * layer), "layer": layer}
             for s in SETTINGS for d in ("cosine", "mahalanobis") for layer in range(3)]
    for setting in SETTINGS:
        _png(directory / "plots" / f"{slug(setting)}.png", MAGENTA)
    _png(directory / "plots" / "layer_sweep.png", (0.0, 0.6, 0.0))
    payload = {
        "format": "ood_zoo.bench", "format_version": 1,
        "table": table, "rows": [{**r, "seed": 1} for r in table],
        "layer_sweep": {"table": sweep, "rows": []},
        "summary": ([{"variant": "generative", "detector": "cosine", "mean_auroc": 0.912}]
                    if fine_tuned else
                    [{"detector": d, "far_auroc": b, "far_fpr95": 1 - b}
                     for d, b in BASE_AUROC.items()]),
        "settings": {"config": {"suite": "fine-tuned" if fine_tuned else "zero-grad",
                                "model": "tiny-lm", "seeds": [1, 2, 3]},
                     "suite": {"name": "zero-grad", "description": description,
                               "notes": ["note one"]},
                     "extraction": {"template": "### Input:\n{text}\n"},
                     "corpora": {"a": "corpus A", "b": "corpus B"}},
        "versions": {"ood_zoo": "0.1.0", "torch": "2.13.0+cpu"},
        "machine": {"platform": "Linux-test", "cpu_count": 2},
        "timing_s": {"extract_s": 12.0, "total_s": 20.0},
        "plots": {"files": [f"results/{directory.name}/plots/{slug(s)}.png" for s in SETTINGS]
                  + [f"results/{directory.name}/plots/layer_sweep.png", "plots/gone.png"]},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(payload, indent=1))
    return payload


def _isotropy(directory: Path) -> dict[str, Any]:
    rows = [{"model": "tiny-lm", "layer": layer, "n": 200, "dim": 64,
             "average_cosine": 0.3 + 0.01 * layer, "partition_isotropy": 0.0004,
             "isoscore": 0.12, "top1_variance": 0.2, "top10_variance": 0.6,
             "auroc_cosine": 0.901 + 0.01 * layer, "auroc_euclidean": 0.85,
             "auroc_mahalanobis": 0.8, "gap_cos_euclid": 0.051, "gap_cos_maha": 0.101,
             "brand_new_metric": "xyz"} for layer in range(2)]
    payload = {
        "format": "ood_zoo.isotropy", "format_version": 1,
        "config": {"models": ["tiny-lm"], "layers": "all"},
        "rows": rows,
        "correlations": [{"x": "average_cosine", "y": "gap_cos_euclid", "pearson": -0.432}],
        "versions": {"ood_zoo": "0.1.0"}, "machine": {"platform": "Linux-test"},
        "plots": {"files": ["plots/isotropy.png"]},
        "future_field": {"comment": "rendered generically"},
    }
    _png(directory / "plots" / "isotropy.png", (0.0, 0.0, 1.0))
    (directory / "isotropy.json").write_text(json.dumps(payload))
    return payload


class _Page(HTMLParser):
    """The start tags, the visible text and the table headers of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.headers: list[str] = []
        self._in_th = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_th = tag == "th" or self._in_th
        if tag == "th":
            self.headers.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_th = self._in_th and tag != "th"

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_th:
            self.headers[-1] += data


def _build(directory: Path) -> tuple[ReportPaths, str, str, _Page]:
    paths = build_report(directory)
    html_text = paths.html.read_text(encoding="utf-8")
    return paths, html_text, paths.md.read_text(encoding="utf-8"), _Page(html_text)


def _absent(text: str, *needles: str) -> list[str]:
    return [n for n in needles if n not in text]


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d+\.\d{3}\b", text))


# ---------------------------------------------------------------------------- content
def test_bench_tables_numbers_and_highlight(tmp_path):
    _bench(tmp_path / "suite")
    paths, html_text, _, page = _build(tmp_path / "suite")
    assert paths == ReportPaths(tmp_path / "suite" / "report.html",
                                tmp_path / "suite" / "report.md")
    visible = " ".join(page.text)
    for heading in ("AUROC: mean ± std over seeds", "FPR95: mean ± std over seeds",
                    "AUPR-In: mean ± std over seeds", "Best detector per setting", "Summary",
                    "Layer sweep", "ROC curves and score histograms", "Machine and versions"):
        assert heading in visible
    assert {"0.912", "0.088", "0.862", "± 0.011", "± 0.022", "± 0.033"} <= set(
        re.findall(r"± \d\.\d{3}|\d\.\d{3}", visible))
    # detectors are columns, best mean AUROC first; the best cell of each row is marked
    assert page.headers[page.headers.index("setting", 10):][:4] == ["setting", "cosine", "knn",
                                                                     "msp"]
    best = re.findall(r'<td class="num best short">([\d.]+)<', html_text)
    assert best.count("0.912") >= 2  # headline + AUROC table
    assert "0.088" in best  # FPR95: lower is better
    assert "0.651" not in best
    assert not _absent(visible, "corpus A", '"### Input:\\n{text}\\n"',  # set-up facts
                       "6 per-seed rows", "Linux-test", "2.13.0+cpu")
    assert {"best layer", "L2"} <= set(page.headers)
    assert metrics.convention("id") in visible


def test_markdown_twin_has_the_same_tables(tmp_path):
    _bench(tmp_path / "suite")
    paths, html_text, md, page = _build(tmp_path / "suite")
    assert _numbers(" ".join(page.text)) == _numbers(md)
    assert "| setting | cosine | knn | msp |" in md
    assert "**0.912 ± 0.011**" in md
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"plots/far_a-b.png", "plots/layer_sweep.png"} <= set(images)
    assert all((paths.md.parent / image).is_file() for image in images)
    assert not _absent(md, "plots/gone.png is missing")
    assert not _absent(html_text, "plots/gone.png is missing")


def test_layer_heatmap_sits_next_to_the_layer_sweep(tmp_path):
    payload = _bench(tmp_path / "suite")
    sweep = payload["layer_sweep"]["table"]
    sweep.append({**sweep[0], "setting": "far:x>y", "auroc": 0.2})  # a second far setting, L0
    groups = layer_heatmap(sweep)
    assert list(groups) == ["far", "near"]
    detectors, layers, grid = groups["far"]
    assert detectors == ["cosine", "mahalanobis"]
    assert layers == [0, 1, 2]
    np.testing.assert_allclose(grid, [[0.35, 0.61, 0.72], [0.5, 0.61, 0.72]])  # mean over far
    sparse = layer_heatmap([{**sweep[0], "setting": "s", "layer": 3},
                            {**sweep[1], "setting": "s", "detector": "knn"}])  # knn at layer 1
    np.testing.assert_array_equal(sparse["all"][2], [[np.nan, 0.5], [0.61, np.nan]])
    path = plot_layer_heatmap(sweep, tmp_path / "suite" / "plots" / "layer_sweep_heatmap.png")
    assert Path(path).read_bytes()[:4] == b"\x89PNG"
    payload["plots"]["files"].append("plots/layer_sweep_heatmap.png")
    (tmp_path / "suite" / "results.json").write_text(json.dumps(payload))
    _, _, md, _ = _build(tmp_path / "suite")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    sweep_at = images.index("plots/layer_sweep.png")
    assert images[sweep_at + 1] == "plots/layer_sweep_heatmap.png"
    assert md.index("Layer sweep") < md.index("plots/layer_sweep_heatmap.png")


def test_extra_grouping_columns_render_generically(tmp_path):
    _bench(tmp_path / "ft", fine_tuned=True)
    _, _, md, page = _build(tmp_path / "ft")
    assert {"variant", "shots", "id accuracy", "mean AUROC"} <= set(page.headers)
    visible = " ".join(page.text)
    assert not _absent(visible, "generative", "0.873", "16")
    assert "id accuracy: mean" not in visible  # one value per row: a column, not a table
    assert "Best detector per setting × variant × shots" in visible
    assert "| setting | variant | shots | id accuracy | cosine | knn | msp |" in md


def test_isotropy_and_parent_directory(tmp_path):
    _bench(tmp_path / "zero-grad-tiny")
    (tmp_path / "iso").mkdir()
    _isotropy(tmp_path / "iso")
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "results.json").write_text('{"format": "something.else"}')
    _, html_text, md, page = _build(tmp_path)
    visible = " ".join(page.text)
    assert not _absent(visible, "zero-grad-tiny", "isotropy study", "0.0004", "-0.432",
                       "rendered generically")
    assert {"average cosine", "AUROC cosine", "gap cos maha", "brand new metric",
            "pearson"} <= set(page.headers)
    assert '<td class="num best short">0.901<' in html_text  # best AUROC of the row
    assert "iso/plots/isotropy.png" in md
    assert "best AUROC per row: AUROC cosine 2" in visible
    assert [a["href"] for t, a in page.tags if t == "a"] == [
        "#headline", "#r-iso", "#r-zero-grad-tiny", "#machine"]


def test_html_is_self_contained_and_escaped(tmp_path):
    hostile = '<script>alert("x")</script> & <img src="http://example.com/x.png">'
    _bench(tmp_path / "suite", description=hostile)
    _, html_text, md, page = _build(tmp_path / "suite")
    assert hostile in " ".join(page.text)  # shown as text ...
    assert "<script" not in html_text.lower()  # ... never as markup
    assert not [t for t, _ in page.tags if t in ("script", "link", "iframe", "object")]
    images = [a["src"] for t, a in page.tags if t == "img"]
    assert len(images) == 3
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    references = [v for _, attrs in page.tags for k, v in attrs.items()
                  if k in ("src", "href", "srcset", "data", "action") and v]
    assert not [v for v in references if re.match(r"\s*(https?:)?//", v)]
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html_text)
    assert "\\<script>" in md  # Markdown escapes it too


def test_plots_skipped_is_a_note(tmp_path):
    payload = _bench(tmp_path / "suite")
    payload["plots"] = {"skipped": "matplotlib is not installed"}
    (tmp_path / "suite" / "results.json").write_text(json.dumps(payload))
    _, _, _, page = _build(tmp_path / "suite")
    assert "plots were not drawn: matplotlib is not installed" in " ".join(page.text)
    assert not [t for t, _ in page.tags if t == "img"]


def test_sparse_results_do_not_crash(tmp_path):
    suite = tmp_path / "sparse"
    (suite / "plots").mkdir(parents=True)
    (suite / "plots" / "roc.png").write_text("not an image")
    failed = _aggregate("far:a>b", "knn", 0.7) | {"auroc": None, "auroc_std": None,
                                                  "auroc_pm": "-", "error": "k > bank size"}
    rows = [_aggregate("far:a>b", "cosine", 0.9), failed,
            _aggregate("far:a>b", "gmm", 0.8, tags=["x", "y"])]
    payload = {"format": "ood_zoo.bench", "format_version": 1, "table": rows,
               "plots": {"files": ["plots/roc.png"]}}
    _write(suite, "results.json", json.dumps(payload))
    _, html_text, _, page = _build(suite)
    assert not _absent(" ".join(page.text), "is not a PNG image", "x, y")
    assert 'title="k &gt; bank size">–<' in html_text
    _write(suite, "results.json", '{"format": "ood_zoo.bench", "format_version": 1, "table": []}')
    assert "Best detector" not in " ".join(_build(suite)[3].text)


def test_out_dir_and_cli(tmp_path, capsys):
    _bench(tmp_path / "suite")
    assert main(["report", str(tmp_path / "suite"), "--out", str(tmp_path / "site"),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"html": str(tmp_path / "site" / "report.html"),
                       "md": str(tmp_path / "site" / "report.md")}
    md = (tmp_path / "site" / "report.md").read_text()
    assert "../suite/plots/far_a-b.png" in md
    assert not (tmp_path / "suite" / "report.html").exists()


# ---------------------------------------------------------------------------- errors
def _write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)
    return directory / name


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "is malformed"),
    ('{"format": "ood_zoo.bench", "format_version": 99, "table": []}', "format version 99"),
    ('{"format": "ood_zoo.bench", "format_version": 1, "table": {"a": 1}}', "'table' must be"),
    ('{"format": "ood_zoo.bench", "format_version": 1, "table": [{"setting": "s"}]}',
     "no 'detector'"),
    ('{"format": "ood_zoo.isotropy", "format_version": 1}', "'rows' must be"),
    ('{"format": "ood_zoo.bench", "format_version": 1, "table": [], "summary": 3}',
     "'summary' must be a list"),
])
def test_bad_results_file_is_named(tmp_path, content, message):
    path = _write(tmp_path / "results" / "suite", "results.json", content)
    with pytest.raises(InputError, match=message) as info:
        build_report(tmp_path / "results")
    assert str(path) in str(info.value)


def test_missing_or_empty_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        build_report(tmp_path / "nowhere")
    with pytest.raises(InputError, match="no ood_zoo results"):
        build_report(tmp_path)
    _write(tmp_path, "results.json", '{"format": "ood_zoo.detector"}')
    with pytest.raises(InputError, match=r"not of those formats: .*results\.json"):
        build_report(tmp_path)


# ---------------------------------------------------------------------------- browser
def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = ("chromium is not installed (Debian: apt-get install chromium; `make test` "
                  "installs it)")
        if os.environ.get("OOD_ZOO_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"OOD_ZOO_REQUIRE_CHROMIUM=1 but {reason}")
        pytest.skip(reason)
    return path


def test_missing_chromium_skips_unless_required(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("OOD_ZOO_REQUIRE_CHROMIUM", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        _chromium()
    monkeypatch.setenv("OOD_ZOO_REQUIRE_CHROMIUM", "1")
    with pytest.raises(pytest.fail.Exception, match="OOD_ZOO_REQUIRE_CHROMIUM=1"):
        _chromium()


def test_page_renders_in_headless_chromium(tmp_path):
    chromium = _chromium()
    _bench(tmp_path / "suite")
    paths = build_report(tmp_path / "suite")
    shot = tmp_path / "shot.png"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
               f"--screenshot={shot}", "--window-size=1280,4000", paths.html.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file(), done.stderr[-2000:]
    pixels = matplotlib_image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (4000, 1280)
    magenta = np.all(np.abs(pixels - np.array(MAGENTA)) < 0.02, axis=-1).sum()
    assert magenta > 2000, "the embedded plot (a magenta patch) is not on the page"
    green = np.all(np.abs(pixels - BEST_GREEN) < 0.02, axis=-1).sum()
    assert green > 500, "no highlighted best cell: the inline CSS did not apply"
    ink = np.all(pixels < 0.35, axis=-1).mean()
    assert 0.002 < ink < 0.5, "the page is blank or unreadable"
