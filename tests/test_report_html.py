"""report.html: its table against importance.json, and a real headless Chromium that
renders the digits study's report with no console error and sorts its table."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report import study  # noqa: F401  (the fixture: a study with fake results)
from test_report import _write_everything

from ablagen.report.html import REPORT_HTML, markdown_html
from conftest import EXAMPLES, ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCREENSHOT = (
    ROOT / "docs" / "report_html.png"
)  # ABLAGEN_UPDATE_SCREENSHOT=1 rewrites it


class Tables(HTMLParser):
    """Every table's rows (cell texts) by table id, and every img src."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_html_report_table_plots_sections_and_determinism(
    study, monkeypatch
):  # noqa: F811
    monkeypatch.chdir(study.parent)
    _write_everything(study)
    first = (study / REPORT_HTML).read_bytes()
    _write_everything(study)
    assert (study / REPORT_HTML).read_bytes() == first  # same inputs, same bytes
    page = Tables()
    page.feed(first.decode())
    ranking = json.loads((study / "importance.json").read_text())
    rows = page.tables["importance-table"][1:]
    assert [r[1] for r in rows] == [r["variant"] for r in ranking["rows"]]
    for cells, row in zip(rows, ranking["rows"]):
        assert cells[0] == str(row["rank"]) and cells[2:4] == [
            row["kind"],
            row["method"],
        ]
        assert cells[4] == f"{row['mean']:+.4f}" and cells[7] == str(row["n"])
    assert page.tables["failed-table"][1][0] == "relu@0:identity"
    # the plots are embedded, byte for byte the PNGs next to the report
    embedded = [base64.b64decode(src.split(",", 1)[1]) for src in page.images]
    assert embedded == [
        (study / "importance.png").read_bytes(),
        (study / "curves.png").read_bytes(),
    ]
    text = first.decode()
    assert "<h2>Four-arm comparison</h2>" in text and "arm table" in text
    assert "ablagen rank study --metric val_acc" in text
    assert 'src="http' not in text and "<link" not in text  # self-contained


def test_markdown_sections_become_escaped_html() -> None:
    text = "Say `a<b` **now**.\n\n| arm | acc |\n|---|---:|\n| x<y | 0.5 |\n\n```sh\nrun <it>\n```"
    assert str(markdown_html(text)) == (
        "<p>Say <code>a&lt;b</code> <strong>now</strong>.</p>\n"
        "<table><thead><tr><th>arm</th><th>acc</th></tr></thead><tbody>"
        '<tr><td>x&lt;y</td><td class="num">0.5</td></tr></tbody></table>\n'
        "<pre><code>run &lt;it&gt;</code></pre>"
    )


# --------------------------------------------------------------------------- browser
CHROMIUM = next(
    (
        p
        for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
        if p
    ),
    None,
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed"
)
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message)); });
(function () {
  var error = console.error;
  console.error = function () {
    window.__errors.push(Array.prototype.join.call(arguments, " "));
    error.apply(console, arguments);
  };
})();
window.addEventListener("load", function () {
  var broken = Array.from(document.images).filter(function (i) {
    return !(i.complete && i.naturalWidth > 0);
  }).length;
  var rows = function () {
    return Array.from(document.querySelectorAll("#importance-table tbody tr")).map(
      function (r) { return r.cells[1].textContent.trim(); });
  };
  var before = rows();
  var header = document.querySelectorAll("#importance-table th")[1];
  if (header) header.click();  // variant, a-z
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({errors: window.__errors, broken: broken,
                                    images: document.images.length,
                                    before: before, sorted: rows()});
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def probe(page: Path, tmp: Path) -> dict:
    """Load ``page`` with an error trap and a click on the variant header; what it saw."""
    probed = tmp / f"probe-{page.name}"
    probed.write_text(page.read_text().replace("<head>", "<head>\n" + PROBE, 1))
    proc = chromium("--dump-dom", probed.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, proc.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def screenshot(page: Path, png: Path, size: str = "1200,2200") -> str:
    """Render ``page`` to ``png`` in headless Chromium; its log (stderr)."""
    proc = chromium(f"--window-size={size}", f"--screenshot={png}", page.as_uri())
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]
    return proc.stderr


@needs_chromium
def test_the_probe_sees_a_script_error(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text("<html><head></head><body><script>nope();</script></body></html>")
    assert "nope is not defined" in " ".join(probe(page, tmp_path)["errors"])
    assert "Uncaught ReferenceError" in screenshot(page, tmp_path / "bad.png")


@pytest.fixture(scope="module")
def digits_study(tmp_path_factory) -> Path:
    """A small real study of examples/digits_cnn.py: its layers, 1 epoch, 2 seeds."""
    from ablagen.cli import main

    out = tmp_path_factory.mktemp("digits") / "digits_cnn"
    args = ["study", str(EXAMPLES / "digits_cnn.py"), "--out", str(out), "--epochs", "1",
            "--seeds", "0,1", "--arm-seeds", "0", "--kinds", "layer", "--quiet"]  # fmt: skip
    assert main(args) in (0, 1)  # an arm may miss the target; the report is written
    return out


@pytest.mark.slow
@needs_chromium
def test_digits_report_renders_in_chromium(digits_study: Path, tmp_path: Path) -> None:
    page = digits_study / REPORT_HTML
    seen = probe(page, tmp_path)
    assert seen["errors"] == [] and seen["broken"] == 0 and seen["images"] == 2
    ranking = json.loads((digits_study / "importance.json").read_text())
    assert seen["before"] == [r["variant"] for r in ranking["rows"]]
    assert seen["sorted"] == sorted(seen["before"])  # the header click sorted it
    assert len(seen["before"]) == 4  # conv1, conv2, fc1, fc2
    png = tmp_path / "report.png"
    log = screenshot(page, png)
    assert "Uncaught" not in log and "CONSOLE" not in log  # nothing on the console
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 50_000  # a page, not a blank
    text = page.read_text()
    assert "The five arms" in text and "arm:shuffled" in text
    if os.environ.get("ABLAGEN_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(png, SCREENSHOT)
