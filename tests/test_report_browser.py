"""The report in a real browser: headless Chromium, no network, no console errors, every
figure drawn, and a screenshot.

Chromium comes from the Debian `chromium` package. When it is missing, the test installs it
only when running as root with `CI` set or `SKIPSEARCH_INSTALL_BROWSER=1`; otherwise it is
skipped with the reason. A test copy of the page gets two small scripts: one at the top that
records errors (window errors, rejected promises, console.error, alert calls), one at the end
that writes what it saw into `<pre id="probe">`, which is read back from `--dump-dom`.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from skipsearch.reporting import data as reports
from skipsearch.reporting.figures import build_figures
from skipsearch.reporting.page import render_report, write_report
from test_reports import XSS, make_study, profile_text

ROOT = Path(__file__).resolve().parents[1]
# a browser start is seconds: left to `make test`
pytestmark = pytest.mark.slow


def _report_png():
    """tools/report_png.py, whose Chromium flags and lookup the tests share (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("report_png", ROOT / "tools" / "report_png.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report_png = _report_png()

PROBE_HEAD = """<script>
window.__seen = {errors: [], alerts: []};
window.addEventListener("error", e => __seen.errors.push("error: " + e.message));
window.addEventListener("unhandledrejection", e => __seen.errors.push("rejection: " + e.reason));
(function () {
  const original = console.error;
  console.error = function (...args) {
    __seen.errors.push("console.error: " + args.join(" "));
    original.apply(console, args);
  };
})();
window.alert = message => __seen.alerts.push(String(message));
</script>"""

PROBE_END = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const figures = [...document.querySelectorAll(".plotly-graph-div")].map(div => ({
    id: div.id, svgs: div.querySelectorAll(".main-svg").length, traces: (div.data || []).length,
    width: div.getBoundingClientRect().width, height: div.getBoundingClientRect().height}));
  const probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({errors: __seen.errors, alerts: __seen.alerts, figures: figures,
    resources: performance.getEntriesByType("resource").map(e => e.name),
    scripts: document.scripts.length, text: document.body.innerText});
  document.body.appendChild(probe);
}, 500));
</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = report_png.find_chromium()
    may_install = os.environ.get("SKIPSEARCH_INSTALL_BROWSER") == "1" or bool(os.environ.get("CI"))
    if binary is None and may_install and hasattr(os, "geteuid") and os.geteuid() == 0:
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            try:
                subprocess.run(command, check=False, capture_output=True, timeout=900,
                               env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            except (OSError, subprocess.TimeoutExpired) as exc:
                print(f"{' '.join(command)} failed: {exc}")
                break
        binary = report_png.find_chromium()
    if binary is None:
        reason = ("headless Chromium not found; install the Debian package `chromium` "
                  "(or run as root with CI=1 or SKIPSEARCH_INSTALL_BROWSER=1 to let the test install it)")
        print(reason)
        pytest.skip(reason)
    return binary


def run_chromium(binary: str, page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    command = [binary, *report_png.OFFLINE_FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def build_page(tmp_path: Path, name: str = "report.html") -> tuple[Path, int]:
    """A page with every figure kind: two studies (one named like an injection), transfer, a compare table."""
    code = make_study("speedup", name=XSS, task=XSS, n_trials=60, num_layers=12, transfer=True)
    math_study = make_study("pareto", name="math", task="gsm8k", n_trials=60, num_layers=12, seed=1)
    data = reports.gather_report_data(
        [code, math_study], {XSS: profile_text(code, XSS), "math": profile_text(math_study, "gsm8k")},
        [f"skipsearch search 'studies/{XSS}.yaml'", "skipsearch report studies/math.yaml"],
        [{"method": "tpe", "evaluations": 60, "decode_speedup": 1.02}, {"method": XSS, "evaluations": 1}])
    figures = build_figures(data)
    path = write_report(tmp_path / name, render_report(data, figures))
    return path, len(figures)


def with_probe(page: Path) -> Path:
    text = page.read_text(encoding="utf-8")
    text = text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_END + "</body>", 1)
    probed = page.with_name("probed-" + page.name)
    probed.write_text(text, encoding="utf-8")
    return probed


def test_report_renders_offline_without_errors(chromium, tmp_path):
    page, n_figures = build_page(tmp_path)
    result = run_chromium(chromium, with_probe(page), tmp_path, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert found, "the probe did not run; stderr: " + result.stderr[-2000:]
    seen = json.loads(html.unescape(found.group(1)))

    assert seen["errors"] == []
    assert seen["alerts"] == []  # the study named <script>alert(1)</script> stayed text
    assert XSS in seen["text"]
    assert [f["id"] for f in seen["figures"]] == [f"figure-{i}" for i in range(n_figures)]
    for figure in seen["figures"]:
        assert figure["svgs"] >= 1 and figure["traces"] >= 1 and figure["width"] > 100, figure
    assert all(url.startswith(("file:", "data:", "blob:")) for url in seen["resources"]), seen["resources"]
    assert seen["scripts"] == 1 + n_figures + 2  # plotly.js, one per figure, the two probes
    # the dumped DOM itself: a drawn SVG inside every figure's container
    chunks = re.split(r'<div id="figure-\d+"', result.stdout)[1:]
    assert len(chunks) == n_figures and all('class="main-svg"' in chunk for chunk in chunks)


def test_report_screenshot(chromium, tmp_path):
    """`make report-png`'s tool draws a report into a PNG, and says in one line what is missing."""
    page, _ = build_page(tmp_path)
    tool = [sys.executable, str(ROOT / "tools" / "report_png.py")]
    shot = tmp_path / "docs" / "report.png"
    shot.parent.mkdir()
    result = subprocess.run([*tool, str(page), str(shot)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    missing = subprocess.run([*tool, str(tmp_path / "none.html"), str(shot)], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "make demo" in missing.stderr
    assert shot.read_bytes() == data
