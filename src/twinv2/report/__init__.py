"""The experiment report: an experiment folder → report.md, report.html, figures/*.png and tables.json.

- `build_report(exp_dir, out_dir=None) -> Path` writes the report (default EXP/report) and returns report.md.
- `check_report(exp_dir, out_dir=None) -> list[str]` re-derives tables.json from the metrics.json files and
  lists every disagreement (empty = consistent).

Modules: load.py (folder → typed records), tables.py and groups.py (every number), power.py and compare.py
(confidence intervals from the prediction files, via the torch-free train/significance.py), paper.py (the
paper's numbers, the only typed-in ones), figures.py (matplotlib, Agg), document.py and compare_blocks.py
(text), render.py (Markdown and self-contained HTML), check.py.
"""

from twinv2.report.build import build_report
from twinv2.report.check import check_report

__all__ = ["build_report", "check_report"]
