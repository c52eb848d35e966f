"""planner show's page in a real headless Chromium (Debian's chromium + chromedriver).

Install both with `bash tools/install_browser.sh` (CI does). Skipped, with the reason,
only where chromium, chromedriver or selenium cannot be found.
"""

import struct
import zlib
from collections import Counter

import numpy as np
import pytest

from planner.cli import main
from planner.plan import save_plan
from planner.show.browser import find_browser, launch, load
from planner.show.sample import ppo_7b_16gpu, ppo_70b_128gpu

pytestmark = pytest.mark.browser

_, _, WHY_NOT = find_browser()


def png_pixels(png: bytes) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) into an HxWx3 uint8 array."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(png):
        n, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            ch = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * ch
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):  # undo each row's filter (PNG spec, section 9)
        start = y * (stride + 1)
        f = raw[start]
        line = np.frombuffer(raw, np.uint8, stride, start + 1)
        if f == 0:  # None
            cur = line.copy()
        elif f == 1:  # Sub: a running sum per channel
            cur = (np.cumsum(line.reshape(width, ch), axis=0) & 255).astype(np.uint8).reshape(-1)
        elif f == 2:  # Up (uint8 wraps mod 256)
            cur = line + prev
        else:  # Average, Paeth: each byte depends on the one before it
            ln, pv, cu = line.tolist(), prev.tolist(), [0] * stride
            for i in range(stride):
                a = cu[i - ch] if i >= ch else 0
                b = pv[i]
                if f == 3:
                    pred = (a + b) >> 1
                else:
                    c = pv[i - ch] if i >= ch else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                cu[i] = (ln[i] + pred) & 255
            cur = np.array(cu, dtype=np.uint8)
        out[y] = prev = cur
    return out.reshape(height, width, ch)[:, :, :3]


@pytest.fixture(scope="module")
def driver():
    if WHY_NOT:
        pytest.skip(f"no headless Chromium here: {WHY_NOT}")
    with launch(width=1440, height=900) as d:
        yield d


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("show")
    out = {}
    for name, make in [("7b", ppo_7b_16gpu), ("70b", ppo_70b_128gpu)]:
        plan = make()
        path = root / f"{name}.json"
        save_plan(plan, path)
        html = root / f"{name}.html"
        assert main(["show", str(path), "-o", str(html)]) == 0
        out[name] = (plan, html)
    plan, _ = out["7b"]
    trace = root / "measured.json"
    assert main(["show", str(root / "7b.json"), "--perfetto", str(trace)]) == 0
    html = root / "7b-measured.html"
    assert main(["show", str(root / "7b.json"), "-o", str(html), "--measured", str(trace)]) == 0
    out["7b-measured"] = (plan, html)
    return out


def _errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _bar_counts(driver, source="estimate"):
    rows = driver.execute_script(
        "return [...document.querySelectorAll(`rect.bar[data-kind=call][data-source=${arguments[0]}]`)]"
        ".map(e => [e.getAttribute('data-call'), +e.getAttribute('data-gpu')])", source)
    return Counter(map(tuple, rows))


@pytest.mark.parametrize("name", ["7b", "70b"])
def test_page_draws_without_errors(driver, pages, name):
    plan, html = pages[name]
    driver.get_log("browser")  # drop what earlier pages logged
    assert load(driver, html), "the page never finished drawing"
    assert _errors(driver) == []
    # One Gantt bar per call per GPU lane it occupies, and none elsewhere.
    counts = _bar_counts(driver)
    want = Counter((a.name, d) for a in plan.calls for d in a.device_ids)
    assert counts == want
    # Reallocs and transfers are bars of their own.
    kinds = driver.execute_script(
        "return [...new Set([...document.querySelectorAll('rect.bar')].map(e => e.dataset.kind))]")
    assert {"call", "realloc"} <= set(kinds)
    # The memory chart: one stacked bar per GPU, with segments, and the capacity line.
    n = plan.cluster.num_devices
    assert driver.execute_script(
        "return document.querySelectorAll('svg#memory-chart g.mem-bar').length") == n
    assert driver.execute_script(
        "return document.querySelectorAll('svg#memory-chart rect.mem-seg').length") >= n
    assert "capacity" in driver.execute_script(
        "return document.getElementById('memory-chart').textContent")
    # The graph, the mesh cards and the table have every call.
    for sel in ("#graph-svg .gnode[data-call]", ".mesh-card[data-call]", "tr.call-row"):
        assert driver.execute_script(f"return document.querySelectorAll('{sel}').length") == \
            len(plan.calls), sel
    # Hovering a bar shows the call's estimate breakdown.
    tip = driver.execute_script("""
        const bar = document.querySelector('rect.bar[data-kind=call]');
        const r = bar.getBoundingClientRect();
        bar.dispatchEvent(new MouseEvent('mousemove', {bubbles: true,
            clientX: r.x + r.width / 2, clientY: r.y + r.height / 2}));
        const t = document.getElementById('tip');
        return [getComputedStyle(t).display, t.textContent, bar.dataset.call];""")
    assert tip[0] == "block" and tip[2] in tip[1] and "layout" in tip[1]
    # A screenshot of the timeline that is not blank: real variance, many colours.
    driver.execute_script("document.getElementById('timeline').scrollIntoView()")
    px = png_pixels(driver.get_screenshot_as_png()).astype(np.float64)
    assert px.shape[1] == 1440 and px.shape[0] >= 600
    assert px.std() > 20
    colours = {tuple(c) for c in px[::5, ::5].reshape(-1, 3)}
    assert len(colours) > 40
    assert _errors(driver) == []


def test_measured_lane_beside_the_estimate(driver, pages):
    plan, html = pages["7b-measured"]
    driver.get_log("browser")
    assert load(driver, html)
    assert _errors(driver) == []
    want = Counter((a.name, d) for a in plan.calls for d in a.device_ids)
    assert _bar_counts(driver, "estimate") == want
    assert _bar_counts(driver, "measured") == want
    headers = driver.execute_script(
        "return [...document.querySelectorAll('table.assign th')].map(e => e.textContent)")
    assert "measured" in headers


def test_png_decoder_reads_what_it_should():
    # A 2x1 RGB image, filter 1 (Sub) on the only row: red then a delta to white.
    raw = bytes([1, 255, 0, 0, 0, 255, 255])
    chunk = lambda k, b: struct.pack(">I", len(b)) + k + b + struct.pack(">I", zlib.crc32(k + b))  # noqa: E731
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    assert png_pixels(png).tolist() == [[[255, 0, 0], [255, 255, 255]]]
