"""report.html: a sweep (or one run) in one self-contained page that any browser opens with no
server: the results table (click a heading to sort; statuses coloured), the report's plots,
then each job's learning curves, confusion matrix and most confident mistakes. Images are
embedded as base64 data URIs, so the file can be mailed or archived on its own.
"""
from __future__ import annotations

import base64
import html
import math
import os
import time
from pathlib import Path

import pandas as pd

from .report import TABLE

# Per-job images, in the order shown (a training run's, task=summary's, task=bench's); mistakes.png
# is folded away (it is large and secondary).
JOB_IMAGES = ("curves.png", "confusion.png", "layers.png", "bench.png")
FOLDED_IMAGES = ("mistakes.png",)
# the console's table (cnnbench-report), and what a page has room for besides
COLUMNS = [*(c for c in TABLE if c != "wall_time_s"), "epochs_completed", "wall_time_s", "device", "error"]
STATUS_COLOURS = {"completed": "#d8f3dc", "diverged": "#ffe5b4", "oom": "#e9d5ff", "interrupted": "#e5e7eb",
                  "failed": "#fecaca", "running": "#dbeafe"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; color: #1f2937; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; } h3 { margin-bottom: .3em; }
table { border-collapse: collapse; font-size: .9em; }
th, td { border: 1px solid #d1d5db; padding: .25em .6em; text-align: right; white-space: nowrap; }
td.text, th { text-align: left; }
td.error { white-space: normal; min-width: 24em; max-width: 40em; text-align: left; color: #7f1d1d; font-size: .85em; }
.scroll { overflow-x: auto; }
th { background: #f3f4f6; cursor: pointer; user-select: none; position: sticky; top: 0; }
th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
tbody tr:hover { background: #f9fafb; }
.plots img, .job img { max-width: 100%; border: 1px solid #e5e7eb; margin: .3em .3em .3em 0; vertical-align: top; }
.job { margin-bottom: 1.5em; } .job img { max-width: 49%; }
.status { font-weight: 600; border-radius: 3px; }
.missing { color: #b91c1c; }
"""
# Sort the results table by the clicked column (numbers as numbers; a second click reverses),
# and count the images the browser could decode (shown in the footer; a test reads it).
SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var col = th.cellIndex, table = th.closest('table'), body = table.tBodies[0];
    var asc = !th.classList.contains('asc');
    table.querySelectorAll('th').forEach(function (h) { h.classList.remove('asc', 'desc'); });
    th.classList.add(asc ? 'asc' : 'desc');
    var rows = Array.from(body.rows);
    var key = function (row) { return row.cells[col].getAttribute('data-value'); };
    var numeric = rows.every(function (r) { var v = key(r); return v === '' || !isNaN(parseFloat(v)); });
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === '' || y === '') { return (x === '') - (y === ''); }  // blanks last
      var d = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return asc ? d : -d;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  images.forEach(function (i) { i.setAttribute('data-loaded', i.complete && i.naturalWidth > 0 ? 'yes' : 'no'); });
  var note = document.getElementById('images-loaded');
  note.textContent = ok.length + ' of ' + images.length + ' images shown';
  note.setAttribute('data-count', ok.length + '/' + images.length);
});
"""


def embed(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" title="{html.escape(alt)}">'


def _plain(value):
    """A numpy scalar (a pandas cell) as Python's own number; anything else as it is."""
    return value.item() if hasattr(value, "item") else value


def _decimals(column: pd.Series) -> int | None:
    """Decimals for a column of numbers, the same for all its cells: 4 below 10 (accuracies,
    seconds), else 1 (23.0 beside 3.3, not beside 3.2896); None for whole numbers (counts, which
    pandas makes floats where some rows lack them)."""
    numbers = [abs(v) for v in map(_plain, column) if isinstance(v, float) and not math.isnan(v)]
    if all(v.is_integer() and v < 1e15 for v in numbers):
        return None
    return 4 if max(numbers) < 10 else 1


def _cell(column: str, value, decimals: int | None) -> str:
    """A table cell: the shown text (floats with their column's ``decimals``), and the raw value
    the sorter compares."""
    value = _plain(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td data-value=""></td>'
    if isinstance(value, float) and decimals is None:
        value = int(value)  # a whole number: pandas makes counts floats where some jobs lack them
    if isinstance(value, float):
        text = f"{value:,.{decimals}f}"
    elif isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:,}"
    else:
        text = str(value)
    if column == "error" and len(text) > 160:
        text = text[:157] + "..."
    raw = html.escape(str(value), quote=True)
    if column == "status":
        colour = STATUS_COLOURS.get(str(value), "#ffffff")
        return f'<td class="text status status-{html.escape(str(value))}" style="background:{colour}" data-value="{raw}">{html.escape(text)}</td>'
    kind = "error" if column == "error" else "text" if isinstance(value, str) else "num"
    return f'<td class="{kind}" data-value="{raw}" title="{raw}">{html.escape(text)}</td>'


def results_table(results: pd.DataFrame, keys: list[str]) -> str:
    columns = ["job", *[k for k in keys if k in results],
               *[c for c in COLUMNS if c in results and c not in keys and results[c].notna().any()]]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    decimals = {c: _decimals(results[c]) for c in columns if c != "job"}
    for _, row in results.iterrows():
        cells = []
        for c in columns:
            value = row.get(c)
            if c == "job":
                cells.append(f'<td class="text" data-value="{html.escape(str(value))}"><a href="#job-{html.escape(str(value))}">'
                             f"{html.escape(str(value))}</a></td>")
            else:
                cells.append(_cell(c, value, decimals[c]))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table class="sortable" id="results"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body) + "\n</tbody></table></div>"


def csv_table(path: Path) -> str:
    """A table the report wrote (design_study.csv, ...), as a sortable HTML table under its name."""
    frame = pd.read_csv(path)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    decimals = {c: _decimals(frame[c]) for c in frame.columns}
    body = ["<tr>" + "".join(_cell(str(c), v, decimals[c]) for c, v in row.items()) + "</tr>"
            for _, row in frame.iterrows()]
    return (f"<h3>{html.escape(path.name)}</h3>\n<div class=\"scroll\"><table class=\"sortable\"><thead><tr>{head}</tr></thead>"
            "<tbody>\n" + "\n".join(body) + "\n</tbody></table></div>")


def job_section(job_dir: Path, row: pd.Series, keys: list[str]) -> str:
    job = str(row["job"])
    label = ", ".join(f"{k}={row[k]}" for k in keys if k in row)
    status = str(row.get("status", ""))
    colour = STATUS_COLOURS.get(status, "#ffffff")
    parts = [f'<section class="job" id="job-{html.escape(job)}">',
             f'<h3>job {html.escape(job)}{": " + html.escape(label) if label else ""} <span class="status" '
             f'style="background:{colour}">{html.escape(status)}</span></h3>']
    error = row.get("error")
    if isinstance(error, str) and error:
        parts.append(f'<p class="missing">{html.escape(error)}</p>')
    shown = [embed(job_dir / name, f"job {job}: {name}") for name in JOB_IMAGES if (job_dir / name).is_file()]
    parts.append("".join(shown) or f'<p class="missing">no plots (the run wrote none of {", ".join(JOB_IMAGES)})</p>')
    folded = [embed(job_dir / name, f"job {job}: {name}") for name in FOLDED_IMAGES if (job_dir / name).is_file()]
    if folded:
        parts.append("<details><summary>most confident mistakes</summary>" + "".join(folded) + "</details>")
    parts.append("</section>")
    return "\n".join(parts)


def write_html(path: Path, results: pd.DataFrame, keys: list[str], plots: list[Path]) -> Path:
    """Write ``report.html`` into ``path`` (a sweep dir, or a run dir with one job): the results
    table, the report's ``plots`` (its PNGs as images, its CSVs as tables) and every job's figures."""
    single = (path / "summary.json").is_file()
    name = path.name if single else str(path)
    counts = results["status"].value_counts().to_dict() if "status" in results else {}
    tally = ", ".join(f"{n} {s}" for s, n in counts.items())
    jobs = [job_section(path if single else path / str(row["job"]), row, keys) for _, row in results.iterrows()]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cnnbench report: {html.escape(name)}</title>
<style>{STYLE}</style></head>
<body>
<h1>cnnbench report: {html.escape(name)}</h1>
<p>{len(results)} job(s): {html.escape(tally)}. Written {time.strftime('%Y-%m-%d %H:%M:%S')}.
Swept: {html.escape(', '.join(keys) or 'nothing')}. Click a column heading to sort.</p>
<h2>Results</h2>
{results_table(results, keys)}
<h2>Plots</h2>
<div class="plots">{''.join(embed(p, p.name) for p in plots if p.suffix == ".png" and p.is_file()) or '<p>none</p>'}</div>
{''.join(csv_table(p) for p in plots if p.suffix == ".csv" and p.is_file())}
<h2>Jobs</h2>
{''.join(jobs)}
<p><small id="images-loaded" data-count=""></small></p>
<script>{SCRIPT}</script>
</body></html>
"""
    out = path / "report.html"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
