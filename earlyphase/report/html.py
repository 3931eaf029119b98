"""An experiment's report.html and check.json, and the demo's index.html.

Pages are single self-contained files (inline CSS, no JavaScript, nothing fetched), so a report can
be opened from a copied or archived store directory. Everything that comes from a caller is escaped.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..store.atomic import write_bytes_atomic

if TYPE_CHECKING:
    import pandas

LONG_TABLE_ROWS = 60
CHECK_KEYS = ("experiment", "statement", "pass", "numbers", "wall_seconds", "measured", "meaning")

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#222;
  max-width:1100px;margin:1.5em auto;padding:0 1em}
h1{font-size:1.5em;margin:.2em 0 .6em}
h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.4em 0;font-size:13px}
th,td{border:1px solid #ddd;padding:.2em .55em;text-align:right;vertical-align:top}
th{background:#f4f4f4}
td.text,th.text{text-align:left}
.banner{padding:.7em 1em;border-radius:4px;margin:.6em 0 1em;border:1px solid}
.banner .verdict{font-weight:700;font-size:1.2em;margin-right:.6em}
.pass{background:#e6f4ea;border-color:#34a853;color:#0d5323}
.fail{background:#fce8e6;border-color:#d93025;color:#8c1d18}
.finding,.none{background:#eef3fc;border-color:#4a7bd0;color:#1a3d7c}
span.pass,span.fail,span.finding,span.none{padding:0 .4em;border-radius:3px;border:1px solid;
  font-weight:600}
figure{display:inline-block;margin:.5em 1em .8em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:.6em;overflow-x:auto;font-size:12px}
details summary{cursor:pointer;color:#1a3d7c}
.card{display:flex;gap:1.2em;align-items:flex-start;margin:1em 0;clear:both}
.card h2{flex-basis:100%}
.card{flex-wrap:wrap}
.card-figure{flex:0 0 460px}
.card-figure img{max-width:460px;border:1px solid #eee}
.card-text{flex:1 1 300px}
footer{margin-top:2.5em;font-size:12px;color:#777;border-top:1px solid #eee;padding-top:.5em}
"""


# ----------------------------------------------------------------------------------------------
# plain JSON values

def to_plain(obj: Any) -> Any:
    """Turn numpy/torch scalars and arrays, dataclasses, paths and tuples into plain JSON values.

    Non-finite floats become None: JSON has no NaN, and a strict reader (a browser, jq) rejects it.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [to_plain(v) for v in items]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)  # numpy scalars/arrays and torch tensors
    if callable(tolist):
        if getattr(obj, "requires_grad", False):
            obj = obj.detach()
        return to_plain(obj.tolist())
    item = getattr(obj, "item", None)
    if callable(item):
        return to_plain(item())
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON: {obj!r}")


def _dumps(obj: Any, **kwargs: Any) -> str:
    return json.dumps(to_plain(obj), allow_nan=False, ensure_ascii=False, **kwargs)


# ----------------------------------------------------------------------------------------------
# check.json

def write_check(directory: Path, *, experiment: str, statement: str, passed: bool | None,
                numbers: Mapping[str, Any], wall_seconds: float, measured: str = "", meaning: str = "") -> Path:
    """Write ``directory/check.json``: the verdict as data, so scripts need not parse the report.

    ``passed=None`` marks a finding rather than a pass/fail claim (``"pass": null``); ``measured`` and
    ``meaning`` are the verdict in plain words.
    """
    if passed is not None:
        passed = bool(passed)
    check = {
        "experiment": str(experiment),
        "statement": str(statement),
        "pass": passed,
        "numbers": to_plain(dict(numbers)),
        "wall_seconds": to_plain(float(wall_seconds)),
        "measured": str(measured),
        "meaning": str(meaning),
    }
    path = Path(directory) / "check.json"
    write_bytes_atomic(path, (_dumps(check, indent=2) + "\n").encode())
    return path


def read_check(directory: Path) -> dict | None:
    """The experiment's check.json as a dict, or None if it has none (e.g. it failed early)."""
    path = Path(directory) / "check.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def verdict(check: Mapping[str, Any] | None) -> str:
    """PASS, FAIL, FINDING (judged on nothing: ``pass`` is null) or NO CHECK."""
    if check is None:
        return "NO CHECK"
    value = check.get("pass")
    if value is None:
        return "FINDING"
    return "PASS" if value else "FAIL"


def _verdict_class(word: str) -> str:
    return {"PASS": "pass", "FAIL": "fail", "FINDING": "finding"}.get(word, "none")


# ----------------------------------------------------------------------------------------------
# formatting helpers

def _fmt(value: Any) -> str:
    """A number to 4 significant digits; anything else as compact JSON or text."""
    if isinstance(value, bool) or value is None:
        return "null" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value
    try:
        return _dumps(value)
    except TypeError:
        return str(value)


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _href(target: Path, base: Path) -> str:
    """A relative, URL-quoted, HTML-escaped link from directory ``base`` to ``target``."""
    rel = Path(os.path.relpath(Path(target).absolute(), Path(base).absolute())).as_posix()
    return escape(urllib.parse.quote(rel), quote=True)


def _page(title: str, body: Iterable[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def _footer(wall_seconds: float | None = None) -> str:
    from .._version import __version__

    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    parts = [f"generated {escape(now)}", f"earlyphase {escape(str(__version__))}"]
    if wall_seconds is not None:
        parts.append(f"wall time {escape(_fmt_seconds(wall_seconds))}")
    return "<footer>" + " &middot; ".join(parts) + "</footer>"


# ----------------------------------------------------------------------------------------------
# report.html

def _check_html(check: Mapping[str, Any] | None,
                check_tables: Mapping[str, "pandas.DataFrame"] | None = None) -> list[str]:
    """The verdict banner, the verdict in plain words, its numbers and the per-seed tables behind it."""
    word = verdict(check)
    if check is None:
        return [f'<div class="banner none"><span class="verdict">{word}</span>'
                "this experiment recorded no check</div>"]
    out = [f'<div class="banner {_verdict_class(word)}"><span class="verdict">{word}</span>'
           f'{escape(str(check.get("statement", "")))}</div>']
    words = [("What was claimed", check.get("statement")), ("What was measured", check.get("measured")),
             ("What it means", check.get("meaning"))]
    if check.get("measured") or check.get("meaning"):
        out += [f"<h3>{title}</h3><p>{escape(str(text))}</p>" for title, text in words if text]
    out += _numbers_html(check.get("numbers") or {})
    out += [_table_html(name, df) for name, df in (check_tables or {}).items()]
    return out


def _numbers_html(numbers: Mapping[str, Any]) -> list[str]:
    """Scalars as one quantity/value table; a mapping of mappings (per seed, per setting) as a table
    of its own, rows the outer keys; never JSON text."""
    import pandas as pd

    scalars = {k: v for k, v in numbers.items() if not isinstance(v, Mapping)}
    out = []
    if scalars:
        rows = "".join(f'<tr><td class="text">{escape(str(k))}</td><td>{escape(_fmt(v))}</td></tr>'
                       for k, v in scalars.items())
        out.append('<table class="numbers"><thead><tr><th class="text">quantity</th>'
                   f"<th>value</th></tr></thead><tbody>{rows}</tbody></table>")
    for key, value in numbers.items():
        if not isinstance(value, Mapping):
            continue
        if value and all(isinstance(v, Mapping) for v in value.values()):
            df = pd.DataFrame.from_dict({str(k): dict(v) for k, v in value.items()}, orient="index")
        else:
            df = pd.DataFrame({"value": {str(k): _fmt(v) for k, v in value.items()}})
        out.append(_table_html(key, df))
    return out


def _figures_html(figures: Sequence[Path], directory: Path) -> list[str]:
    """PNG shown inline with a link to its SVG twin; an SVG whose PNG is shown is not repeated."""
    paths = [Path(p) for p in figures]
    shown_png = {p.with_suffix("") for p in paths if p.suffix.lower() == ".png"}
    out = []
    for path in paths:
        suffix = path.suffix.lower()
        if suffix == ".svg" and path.with_suffix("") in shown_png:
            continue
        caption = escape(path.stem)
        links = ""
        svg = path.with_suffix(".svg")
        if suffix == ".png" and (svg in paths or svg.exists()):
            links = f' &middot; <a href="{_href(svg, directory)}">SVG</a>'
        out.append(f'<figure><img src="{_href(path, directory)}" alt="{caption}">'
                   f"<figcaption>{caption}{links}</figcaption></figure>")
    return out


def _table_html(name: str, table: "pandas.DataFrame") -> str:
    import pandas as pd

    df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    show_index = not isinstance(df.index, pd.RangeIndex)
    body = df.to_html(float_format=lambda v: f"{v:.4g}", escape=True, index=show_index, border=0,
                      classes="data", na_rep="NaN", max_rows=None, max_cols=None)
    head = f"<h3>{escape(str(name))}</h3>"
    if len(df) > LONG_TABLE_ROWS:
        return (f"{head}<details><summary>{len(df)} rows &times; {len(df.columns)} columns "
                f"(click to show)</summary>\n{body}\n</details>")
    return f"{head}\n{body}"


def write_report(directory: Path, *, title: str, check: Mapping[str, Any] | None,
                 figures: Sequence[Path], tables: Mapping[str, "pandas.DataFrame"],
                 configs: Mapping[str, object], notes: Sequence[str] = (),
                 wall_seconds: float | None = None,
                 check_tables: Mapping[str, "pandas.DataFrame"] | None = None) -> Path:
    """Write ``directory/report.html``: the verdict, figures, tables and configs on one page.

    Figures are linked by paths relative to ``directory`` (the page moves with its directory).
    ``wall_seconds`` defaults to the check's.
    """
    directory = Path(directory)
    if wall_seconds is None and check is not None:
        wall_seconds = check.get("wall_seconds")
    body = [f"<h1>{escape(title)}</h1>"]
    body += _check_html(check, check_tables)
    if figures:
        body.append("<h2>Figures</h2>")
        body += _figures_html(figures, directory)
    if tables:
        body.append("<h2>Tables</h2>")
        body += [_table_html(name, df) for name, df in tables.items()]
    if configs:
        body.append("<h2>Configuration</h2>")
        for name, cfg in configs.items():
            try:
                text = _dumps(cfg, indent=2, sort_keys=True)
            except TypeError:
                text = repr(cfg)
            body.append(f"<h3>{escape(str(name))}</h3>\n<pre>{escape(text)}</pre>")
    if notes:
        body.append("<h2>Notes</h2>")
        body.append("<ul>" + "".join(f"<li>{escape(str(n))}</li>" for n in notes) + "</ul>")
    body.append(_footer(wall_seconds))
    path = directory / "report.html"
    write_bytes_atomic(path, _page(title, body).encode("utf-8"))
    return path


# ----------------------------------------------------------------------------------------------
# index.html

def write_index(path: Path, entries: Sequence[Mapping[str, Any]],
                title: str = "earlyphase experiments") -> Path:
    """Write an index page: a summary table, then each experiment's main figure beside its verdict.

    Each entry: ``name``, ``report`` (path to report.html), ``check`` (dict or None),
    ``wall_seconds`` (None to take the check's) and optionally ``figure`` (the main PNG). Links are
    relative to the index's directory.
    """
    path = Path(path)
    counts: dict[str, int] = {}
    rows, cards = [], []
    total = 0.0
    for entry in entries:
        check = entry.get("check")
        word = verdict(check)
        counts[word] = counts.get(word, 0) + 1
        seconds = entry.get("wall_seconds")
        if seconds is None and check is not None:
            seconds = check.get("wall_seconds")
        if seconds is not None and math.isfinite(seconds):
            total += seconds
        statement = "" if check is None else str(check.get("statement", ""))
        report = entry.get("report")
        link = (f'<a href="{_href(Path(report), path.parent)}">report</a>'
                if report is not None else "")
        badge = f'<span class="{_verdict_class(word)}">{word}</span>'
        rows.append(f'<tr><td class="text">{escape(str(entry["name"]))}</td><td class="text">{badge}</td>'
                    f'<td class="text">{escape(statement)}</td>'
                    f"<td>{escape(_fmt_seconds(seconds))}</td><td class=\"text\">{link}</td></tr>")
        cards.append(_index_card(entry, badge, statement, link, path.parent))
    summary = ", ".join(f"{n} {word.lower()}" for word, n in sorted(counts.items())) or "none"
    body = [f"<h1>{escape(title)}</h1>",
            f"<p>{len(rows)} experiments: {escape(summary)}.</p>",
            '<table class="index"><thead><tr><th class="text">experiment</th>'
            '<th class="text">verdict</th><th class="text">statement</th><th>wall time</th>'
            '<th class="text">link</th></tr></thead><tbody>',
            *rows,
            "</tbody></table>",
            *cards,
            _footer(total if rows else None)]
    write_bytes_atomic(path, _page(title, body).encode("utf-8"))
    return path


def _index_card(entry: Mapping[str, Any], badge: str, statement: str, link: str, base: Path) -> str:
    """One experiment on the index: its main figure, and beside it the verdict in plain words."""
    check = entry.get("check") or {}
    figure = entry.get("figure")
    img = (f'<a href="{_href(Path(entry["report"]), base)}"><img src="{_href(Path(figure), base)}" '
           f'alt="{escape(str(entry["name"]))}"></a>' if figure is not None and entry.get("report") else "")
    words = "".join(f"<p><b>{title}</b> {escape(str(check[key]))}</p>"
                    for title, key in (("Measured:", "measured"), ("Meaning:", "meaning")) if check.get(key))
    return (f'<div class="card"><h2>{escape(str(entry["name"]))} {badge}</h2>'
            f'<div class="card-figure">{img}</div><div class="card-text"><p>{escape(statement)}</p>'
            f"{words}<p>{link}</p></div></div>")
