"""`dvc plots show` writes a page whose charts render with the network off (Korean financial firms often develop on
network-separated machines): Vega, Vega-Lite and vega-embed are inlined in .dvc/plots/offline.html, the page
.dvc/config names. Checked in a real headless Chromium that can reach no host."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
# DVC's own page (dvc_render.html.PAGE_HTML): its {scripts} become <script src> tags on a CDN.
CDN_PAGE = """<!DOCTYPE html><html><head>{refresh_tag}<title>DVC Plot</title>{scripts}</head>
<body>{plot_divs}</body></html>"""


def dvc_plots_show(out: Path, *extra: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(out), *extra], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=300)
    return (out / "index.html").read_text(encoding="utf-8")


def rendered_dom(page: Path, tmp_path: Path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with every host unresolvable and a dead proxy."""
    result = subprocess.run(
        [BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--proxy-server=127.0.0.1:9", "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(BROWSER is None, reason="needs a headless Chromium (Debian package chromium; .ci/run installs it)")
def test_dvc_plots_show_renders_every_chart_with_the_network_off(tmp_path):
    html = dvc_plots_show(tmp_path / "offline")
    assert "<script src=" not in html  # nothing to fetch
    charts = html.count("vegaEmbed(")
    assert charts >= 20  # the training curves, the eval bars, the trading plots
    dom = rendered_dom(tmp_path / "offline" / "index.html", tmp_path)
    assert dom.count("<canvas") == charts
    # The same plots on DVC's own page stay blank without the network: the check above can fail.
    (tmp_path / "cdn.html").write_text(CDN_PAGE, encoding="utf-8")
    cdn = dvc_plots_show(tmp_path / "cdn", "--html-template", str(tmp_path / "cdn.html"))
    assert "<script src=\"https://" in cdn and cdn.count("vegaEmbed(") == charts
    assert rendered_dom(tmp_path / "cdn" / "index.html", tmp_path).count("<canvas") == 0
