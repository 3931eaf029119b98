"""How a Run and an Experiment show themselves in a notebook (``_repr_html_``): the verdict, the key
numbers and the main figure, inline (the figure as a data URI, so the cell needs no file)."""
from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any, Mapping

from .html import _fmt, _verdict_class, verdict


def _img(png: Path | None, width: int = 520) -> str:
    if png is None or not Path(png).is_file():
        return ""
    data = base64.b64encode(Path(png).read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:{width}px">'


def _rows(items: Mapping[str, Any]) -> str:
    return "".join(f"<tr><td style='text-align:left'>{escape(str(k))}</td><td>{escape(_fmt(v))}</td></tr>"
                   for k, v in items.items())


def experiment_html(name: str, check: Mapping[str, Any], figure: Path | None, report: Path) -> str:
    word = verdict(check)
    colour = {"pass": "#0d5323", "fail": "#8c1d18"}.get(_verdict_class(word), "#1a3d7c")
    scalars = {k: v for k, v in (check.get("numbers") or {}).items() if not isinstance(v, (dict, list))}
    return (f"<div><b>{escape(name)}</b> <b style='color:{colour}'>{word}</b>: {escape(str(check.get('statement', '')))}"
            f"<p>{escape(str(check.get('measured', '')))}</p>"
            f"<table>{_rows(dict(list(scalars.items())[:12]))}</table>{_img(figure)}"
            f"<p style='font-size:smaller'>report: {escape(str(report))}</p></div>")


def run_html(run: Any) -> str:
    """A run: id, status, what it trains, its last test accuracy and its test-accuracy curve."""
    cfg = run.config
    acc = run.curve("accuracy", "test")
    info = {"status": run.status, "data": cfg.data.name, "model": cfg.model.name, "steps": str(cfg.train.steps),
            "seed": cfg.seed, "last test accuracy": float(acc.iloc[-1]) if len(acc) else None}
    return f"<div><b>Run {escape(run.id)}</b><table>{_rows(info)}</table>{_curve_svg(acc)}</div>"


def _curve_svg(curve: Any) -> str:
    """A small inline SVG of test accuracy against step (no figure file, no pyplot)."""
    if len(curve) < 2:
        return ""
    import io

    from .figures import new_figure

    fig, ax = new_figure(width=3.6, height=2.2)
    ax.plot(curve.index, curve.values)
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    return buf.getvalue()[buf.getvalue().find("<svg"):]
