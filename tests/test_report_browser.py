"""The HTML report in a real browser: headless Chromium (the system's, driven by playwright-python; no browser
download) loads the file with the network off, logs no console error or page error, and draws the charts: every SVG
chart has a size and painted shapes, and the screenshot is not blank. Skips, saying why, where Chromium or playwright
is missing (CI installs Chromium through .ci/run when it can)."""
import os
import shutil
import struct
import zlib

import pytest

from tests.test_report import STATS, plans

CHROMIUM = next((p for p in (os.environ.get("PARAPLAN_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), shutil.which("google-chrome")) if p), None)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _png_pixels(data: bytes):
    """(width, height, rows of RGB(A) bytes) of an 8-bit non-interlaced PNG, with the standard library only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color in (2, 6)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):     # PNG filters (RFC 2083 6.3)
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium; .ci/run does it when it runs as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


def test_report_renders_in_chromium(browser, tmp_path):
    path = tmp_path / "report.html"
    from paraplan.report import write_report
    write_report(plans(), path, STATS, title="browser test")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    problems = []
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    page.goto(path.as_uri(), wait_until="load")
    assert problems == []
    assert page.evaluate("document.body.getAttribute('data-charts')") == "5"     # the inline script ran
    charts = page.evaluate("""Array.from(document.querySelectorAll('svg.chart')).map(s => {
        const r = s.getBoundingClientRect(); return [r.width, r.height, s.querySelectorAll('rect').length]; })""")
    assert len(charts) == 5 and all(w > 300 and h > 50 and n > 3 for w, h, n in charts), charts
    for i, chart in enumerate(page.query_selector_all("svg.chart")):    # each chart painted, not blank
        width, height, bpp, rows = _png_pixels(chart.screenshot())
        colors, painted = set(), 0
        for row in rows[::2]:
            for x in range(0, width * bpp, bpp * 2):
                px = row[x:x + 3]
                colors.add(px)
                painted += px != b"\xff\xff\xff"
        assert len(colors) >= 4 and painted > 0.05 * (width // 2) * (height // 2), (i, len(colors), painted)
    if os.environ.get("PARAPLAN_SCREENSHOT"):           # the README's picture: PARAPLAN_SCREENSHOT=docs/report.png
        page.screenshot(path=os.environ["PARAPLAN_SCREENSHOT"], full_page=True)
    page.close()
