"""The report package: figures on disk, report.html content and escaping, check.json, index.html."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from earlyphase import __version__
from earlyphase.report import (band, log_step_axis, new_figure, save_figure, verdict, write_check,
                               write_index, write_report)


def _figure(tmp_path: Path, name: str = "curve") -> list[Path]:
    fig, ax = new_figure()
    steps = np.array([0, 1, 10, 100, 1000])
    band(ax, steps, [0.1, 0.2, 0.5, 0.8, 0.9], [0.01, np.nan, 0.02, 0.03, 0.01], label="mean")
    band(ax, steps, [0.2, 0.3, 0.4, 0.5, 0.6], None, label="other", dashed=True, marker=None)
    log_step_axis(ax)
    ax.legend()
    return save_figure(fig, tmp_path, name)


def test_save_figure_writes_png_and_svg(tmp_path):
    png, svg = _figure(tmp_path)
    assert (png.name, svg.name) == ("curve.png", "curve.svg")
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    head = svg.read_text()[:200].lstrip()
    assert head.startswith("<?xml") or head.startswith("<svg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "curve.svg"]  # no temp files


def test_new_figure_grid_of_panels():
    fig, axes = new_figure(ncols=3, nrows=2, width=2, height=2)
    assert axes.shape == (2, 3)
    assert tuple(fig.get_size_inches()) == (6, 4)
    _, ax = new_figure()
    log_step_axis(ax)
    assert ax.get_xscale() == "symlog" and ax.get_xlabel() == "step"


def test_band_skips_nan_std_and_house_style_applies_on_save(tmp_path):
    from earlyphase.report import STYLE

    fig, ax = new_figure()
    band(ax, [0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0], [0.5, np.nan, 0.1, 0.1], label="x")
    ax.set_title("t")
    ax.legend()
    fills = [c for c in ax.collections if c.get_paths()]
    assert len(fills) == 2  # the band over steps 2-3, and an error bar for the lone step 0
    save_figure(fig, tmp_path, "t")
    assert ax.title.get_fontsize() == STYLE["axes.titlesize"]
    assert ax.get_legend().get_texts()[0].get_fontsize() == STYLE["legend.fontsize"]


def _check() -> dict:
    return {"experiment": "rewinding", "statement": "rewinding to k>0 beats k=0",
            "pass": True, "numbers": {"acc_k0": 0.91234567, "acc_k500": 0.95}, "wall_seconds": 12.5}


def test_write_report_content_and_escaping(tmp_path):
    figs = _figure(tmp_path, "acc vs step")
    table = pd.DataFrame({"name": ["<script>alert(1)</script>", "plain"],
                          "value": [1.23456789, 2.0]})
    long = pd.DataFrame({"step": range(100), "loss": np.linspace(1, 0, 100)})
    path = write_report(tmp_path, title="Rewinding <IMP>", check=_check(), figures=figs,
                        tables={"summary": table, "curve": long},
                        configs={"run": {"lr": 0.1, "note": "a<b"}}, notes=["see & compare"])
    assert path == tmp_path / "report.html"
    text = path.read_text()
    assert "Rewinding &lt;IMP&gt;" in text and "<IMP>" not in text
    assert "PASS" in text and "rewinding to k&gt;0 beats k=0" in text
    assert "0.9123" in text and "0.91234567" not in text  # numbers to 4 significant digits
    assert 'src="acc%20vs%20step.png"' in text and 'href="acc%20vs%20step.svg"' in text
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "1.235" in text
    assert text.count("<details>") == 1 and "100 rows" in text  # only the long table collapses
    assert "&quot;lr&quot;: 0.1" in text and "a&lt;b" in text
    assert "see &amp; compare" in text
    assert __version__ in text
    assert not re.search(r"<script|src=\"https?:|href=\"https?:|<link", text)  # self-contained


@pytest.mark.parametrize("passed,word", [(False, "FAIL"), (None, "FINDING")])
def test_write_report_fail_and_finding(tmp_path, passed, word):
    check = {**_check(), "pass": passed}
    text = write_report(tmp_path, title="t", check=check, figures=[], tables={},
                        configs={}).read_text()
    assert word in text and "PASS" not in text
    assert verdict(check) == word


def test_write_check_round_trips_plain_json(tmp_path):
    numbers = {"acc": np.float32(0.5), "n": np.int64(3), "gap": float("nan"),
               "t": torch.tensor(0.25), "curve": np.array([1.0, np.nan]), "ok": np.bool_(True)}
    path = write_check(tmp_path, experiment="early_stats", statement="s", passed=None,
                       numbers=numbers, wall_seconds=np.float64(1.5))
    raw = path.read_text()
    assert "NaN" not in raw
    check = json.loads(raw)
    assert list(check) == ["experiment", "statement", "pass", "numbers", "wall_seconds", "measured", "meaning"]
    assert check["pass"] is None and check["wall_seconds"] == 1.5
    assert check["numbers"] == {"acc": 0.5, "n": 3, "gap": None, "t": 0.25, "curve": [1.0, None],
                                "ok": True}
    assert type(check["numbers"]["n"]) is int
    write_check(tmp_path, experiment="e", statement="s", passed=np.bool_(False), numbers={},
                wall_seconds=0)
    assert json.loads(path.read_text())["pass"] is False


def test_write_index_links_relative_reports(tmp_path):
    exp = tmp_path / "experiments"
    reports = []
    for name in ("rewinding-abc", "early_stats-def"):
        (exp / name).mkdir(parents=True)
        reports.append(write_report(exp / name, title=name, check=None, figures=[], tables={},
                                    configs={}))
    entries = [{"name": "rewinding", "report": reports[0], "check": _check(), "wall_seconds": None},
               {"name": "early_stats", "report": reports[1],
                "check": {**_check(), "pass": None, "statement": "x<y"}, "wall_seconds": 3.0},
               {"name": "broken", "report": None, "check": None, "wall_seconds": None}]
    text = write_index(tmp_path / "index.html", entries).read_text()
    assert 'href="experiments/rewinding-abc/report.html"' in text
    assert 'href="experiments/early_stats-def/report.html"' in text
    assert str(tmp_path) not in text
    for word in ("PASS", "FINDING", "NO CHECK", "x&lt;y", "12.5 s", "3.0 s"):
        assert word in text


def test_report_explains_the_verdict_and_shows_nested_numbers_as_tables(tmp_path):
    check = {**_check(), "measured": "k=500 gave 96.3 % against 93.8 % at k=0", "meaning": "rewinding <matters>",
             "numbers": {"margin": 0.025, "per_seed": {"0": {"k0": 0.93, "k500": 0.96}, "1": {"k0": 0.94, "k500": 0.97}},
                         "matching": {"0it": 0.64, "500it": 0.134}}}
    per_seed = pd.DataFrame({"seed": [0, 1], "k0": [0.931, 0.945]})
    text = write_report(tmp_path, title="t", check=check, figures=[], tables={}, configs={},
                        check_tables={"per seed": per_seed}).read_text()
    for words in ("What was claimed", "What was measured", "k=500 gave 96.3 %", "rewinding &lt;matters&gt;"):
        assert words in text
    assert "{&quot;" not in text and '{"' not in text  # no JSON text anywhere in the verdict
    assert "<h3>per_seed</h3>" in text and "<h3>matching</h3>" in text and "<h3>per seed</h3>" in text
    assert "0.945" in text and "0.134" in text
