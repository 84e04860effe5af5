"""report.html: one self-contained page with every job and every image, checked as text and
rendered in a real headless browser (Chromium from Debian's packages)."""
from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cnnbench import report
from cnnbench.train import run


class Page(HTMLParser):
    """The parts of report.html a test reads: images, the results table's rows, sections."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.sections: list[str] = []
        self.rows: list[list[str]] = []
        self.headings: list[str] = []
        self._where: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "section":
            self.sections.append(attrs.get("id", ""))
        elif tag == "tr" and "tbody" in self._where:
            self.rows.append([])
        elif tag == "td" and self.rows:
            self.rows[-1].append("")  # one entry per cell, empty ones too
        if tag in ("tbody", "td", "th"):
            self._where.append(tag)

    def handle_endtag(self, tag):
        if self._where and self._where[-1] == tag:
            self._where.pop()

    def handle_data(self, data):
        if self._where and self._where[-1] == "td" and self.rows:
            self.rows[-1][-1] += data
        elif self._where and self._where[-1] == "th":
            self.headings.append(data)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """A sweep dir as a multirun leaves it: two trained jobs and one that failed (made once)."""
    from conftest import write_idx

    from cnnbench.config import compose

    root = tmp_path_factory.mktemp("sweep")
    tiny = write_idx(tmp_path_factory.mktemp("tiny"))
    jobs = [["optimizer.lr=0.01", "model.padding=0"], ["optimizer.lr=0.1", "model.padding=0"],
            ["optimizer.lr=0.1", "model.padding=-9"]]
    for job, overrides in enumerate(jobs):
        run(compose("trainer=smoke", f"data.root={tiny}", *overrides), root / str(job), overrides)
    return root


def test_the_report_holds_every_job_and_every_image(sweep_dir):
    results, written = report.report(sweep_dir, html=True)
    page_path = sweep_dir / "report.html"
    assert page_path in written
    page = Page(page_path.read_text())
    assert page.sections == ["job-0", "job-1", "job-2"]
    assert [row[0] for row in page.rows] == ["0", "1", "2"]
    assert ["completed", "completed", "failed"] == [r[page.headings.index("status")] for r in page.rows]
    assert page.headings[:3] == ["job", "optimizer.lr", "model.padding"] and "worst_class" in page.headings
    for job in ("0", "1"):  # each trained job's curves, confusion matrix and mistakes, embedded byte for byte
        for name in ("curves.png", "confusion.png", "mistakes.png"):
            expected = base64.b64encode((sweep_dir / job / name).read_bytes()).decode()
            assert sum(img["src"] == f"data:image/png;base64,{expected}" for img in page.images) == 1, (job, name)
    for png in [w for w in written if w.suffix == ".png"]:  # the report's own plots
        assert any(img["alt"] == png.name for img in page.images), png
    assert len(page.images) == 2 * 3 + len([w for w in written if w.suffix == ".png"])
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)  # nothing to fetch
    text = page_path.read_text()
    assert "model.padding=-9 is not allowed" in text  # the failed job says why
    assert 'class="text status status-failed"' in text and "<script>" in text


def test_the_command_writes_report_html(sweep_dir, capsys):
    assert report.main([str(sweep_dir / "0"), "--html"]) == 0  # one run
    page = Page((sweep_dir / "0" / "report.html").read_text())
    assert page.sections == ["job-0"] and len(page.images) == 4  # curves, confusion, mistakes + report_curves


@pytest.fixture
def scratch():
    """A short-named dir of Chromium's own in /tmp (its socket's path must stay under 108 bytes,
    which pytest's tmp_path or a deep $TMPDIR is not; a $TMPDIR that does not exist stops it)."""
    folder = Path(tempfile.mkdtemp(prefix="chromium-", dir="/tmp" if os.path.isdir("/tmp") else None))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="needs Chromium (apt-get install chromium) to render report.html")
def test_a_browser_shows_the_table_and_every_image(sweep_dir, tmp_path, scratch):
    report.report(sweep_dir, html=True)
    page = sweep_dir / "report.html"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--allow-file-access-from-files",
               f"--user-data-dir={scratch}"]
    env = {**os.environ, "TMPDIR": str(scratch)}  # its profile and sockets here: none of $TMPDIR or $HOME
    dom = subprocess.run([*browser, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, env=env)
    assert dom.returncode == 0, dom.stderr[-2000:]
    images = len(Page(page.read_text()).images)
    # the page's script counts, after loading, the images the browser decoded
    assert f'data-count="{images}/{images}"' in dom.stdout, re.findall(r'id="images-loaded"[^>]*>[^<]*', dom.stdout)
    assert dom.stdout.count('data-loaded="yes"') == images and 'data-loaded="no"' not in dom.stdout
    rendered = Page(dom.stdout)
    assert [row[0] for row in rendered.rows] == ["0", "1", "2"]
    # a click on a heading sorts by it, numbers as numbers; a second click reverses
    column = rendered.headings.index("wall_time_s")
    times = {row[0]: float(row[column]) for row in rendered.rows}
    for clicks, descending in ((1, False), (2, True)):
        clicked = tmp_path / f"clicked{clicks}.html"
        script = f"<script>var th = document.querySelectorAll('th')[{column}];{' th.click();' * clicks}</script></body>"
        clicked.write_text(page.read_text().replace("</body>", script))
        dom = subprocess.run([*browser, "--dump-dom", clicked.as_uri()], capture_output=True, text=True, timeout=120, env=env)
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert [row[0] for row in Page(dom.stdout).rows] == sorted(times, key=times.get, reverse=descending)
    shot = tmp_path / "report.png"  # look at it: pytest --basetemp=DIR keeps it
    subprocess.run([*browser, "--window-size=1400,1000", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, env=env)
    assert shot.stat().st_size > 30_000  # a page with a table and plots, not a blank one


def test_a_table_the_report_wrote_is_an_html_table_not_an_image(tmp_path):
    """A design study's design_study.csv was embedded as an <img> of CSV text: a broken image."""
    import pandas as pd

    from cnnbench.html_report import write_html

    table = tmp_path / "design_study.csv"
    table.write_text("space,n,area_vs_anynetx_a,seconds\nanynetx_a,32,0.0,23.0\nregnetx,32,0.0312,3.2896\n")
    page_path = write_html(tmp_path, pd.DataFrame({"job": [], "status": []}), [], [table])
    page = Page(page_path.read_text())
    assert page.images == []
    assert ["space", "n", "area_vs_anynetx_a", "seconds"] == page.headings[-4:]
    # a column's numbers with the same decimals: 23.0 beside 3.3, not beside 3.2896
    assert page.rows[-2:] == [["anynetx_a", "32", "0.0000", "23.0"], ["regnetx", "32", "0.0312", "3.3"]]
    assert "<h3>design_study.csv</h3>" in page_path.read_text()


def test_a_summary_sweeps_page_shows_each_networks_layers_and_the_tables_answer_columns(tmp_path):
    """report.html said "no plots" for each task=summary job (each has layers.png), and its table
    left out params_conv, params_linear and infer_memory_mb, which the console's table shows."""
    from cnnbench.config import compose

    jobs = [["model=lenet"], ["model=bn_lenet"]]
    for job, overrides in enumerate(jobs):
        run(compose("task=summary", *overrides), tmp_path / str(job), overrides)
    report.report(tmp_path, html=True)
    page = Page((tmp_path / "report.html").read_text())
    assert {"params_conv", "params_linear", "infer_memory_mb", "train_memory_mb"} <= set(page.headings)
    for job in ("0", "1"):
        expected = base64.b64encode((tmp_path / job / "layers.png").read_bytes()).decode()
        assert sum(img["src"] == f"data:image/png;base64,{expected}" for img in page.images) == 1, job
    assert "no plots" not in (tmp_path / "report.html").read_text()
