"""Figures (PNG + SVG), per-experiment report.html and check.json, and the demo's index.html."""
from .figures import STYLE, band, reference_lines, log_step_axis, new_figure, save_figure, style
from .html import read_check, to_plain, verdict, write_check, write_index, write_report

__all__ = ["save_figure", "new_figure", "band", "reference_lines", "log_step_axis", "style", "STYLE",
           "write_report", "write_check", "write_index", "read_check", "verdict", "to_plain"]
