"""The picture of a report that the README shows: the page opened in headless Chromium.

    python tools/report_png.py [REPORT.html] [PNG]    # default reports/demo.html -> docs/report.png

`make report-png` runs it after `make demo`. Chromium comes from the Debian `chromium` package;
no network is used (the report embeds plotly.js). The picture replaces PNG atomically.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from skipsearch.errors import SkipsearchError  # noqa: E402
from skipsearch.files import write_atomic  # noqa: E402

# headless, offline (any host name resolves to nothing) and given 10 s of virtual time to draw;
# tests/test_report_browser.py opens its pages with the same flags
OFFLINE_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND",
                 "--virtual-time-budget=10000"]
WINDOW = "1280,3400"  # wide enough for the figures side by side, tall enough for the heat maps


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def screenshot(report: Path, png: Path) -> Path:
    if not report.is_file():
        raise SkipsearchError(f"{report} not found: run `make demo` first, or name a report that exists")
    binary = find_chromium()
    if binary is None:
        raise SkipsearchError("headless Chromium not found; install it (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as folder:
        shot = Path(folder) / "report.png"
        done = subprocess.run([binary, *OFFLINE_FLAGS, "--hide-scrollbars", f"--window-size={WINDOW}",
                               f"--user-data-dir={folder}/profile", f"--screenshot={shot}", report.resolve().as_uri()],
                              capture_output=True, text=True, timeout=180)
        if done.returncode != 0 or not shot.is_file():
            raise SkipsearchError(f"Chromium did not draw {report}: {done.stderr.strip()[-300:]}")
        return write_atomic(png, shot.read_bytes(), what="picture")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", default=str(ROOT / "reports" / "demo.html"))
    parser.add_argument("png", nargs="?", default=str(ROOT / "docs" / "report.png"))
    args = parser.parse_args(argv)
    try:
        print(screenshot(Path(args.report), Path(args.png)))
    except SkipsearchError as error:
        print(f"report_png: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
