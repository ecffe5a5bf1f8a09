"""``jaxcloak serve`` as people meet it: a real uvicorn server on loopback, its page driven by
headless Chromium (Debian's ``chromium`` and ``chromium-driver``, which ``.ci/run`` installs),
and 20 concurrent uploads against a queue of 4."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")
httpx = pytest.importorskip("httpx", reason="the load test's client needs httpx")

import uvicorn  # noqa: E402

from jaxcloak.cli.main import build_parser  # noqa: E402
from jaxcloak.cli.wiring import make_cloaker  # noqa: E402
from jaxcloak.io import write_image  # noqa: E402
from jaxcloak.serve.app import create_app  # noqa: E402
from jaxcloak.serve.jobs import Limits  # noqa: E402
from jaxcloak.serve.work import Warm  # noqa: E402


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A live server with a warm model (cheapest settings) on a free loopback port."""
    args = build_parser().parse_args(["serve", "--steps", "1", "--views", "1", "--batch", "2"])
    args._precision, args._compiles = None, None

    def build(strength: str):
        args.strength = strength
        return make_cloaker(args)

    warm = Warm(build)
    warm.get("mid")  # as `jaxcloak serve` does before it listens
    root = tmp_path_factory.mktemp("serve_jobs")
    app = create_app(warm, root, Limits(queue=4))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", root
    srv.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def demo_photo(tmp_path_factory) -> Path:
    import skimage.data

    path = tmp_path_factory.mktemp("demo") / "astronaut.png"
    write_image(path, skimage.data.astronaut(), format="PNG")  # public domain (NASA)
    return path


def _browser():
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chrome and driver):
        pytest.skip(
            "no chromium and chromedriver here (Debian: apt install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,1400"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def test_page_protects_the_demo_photo_in_a_real_browser(server, demo_photo, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    browser = _browser()
    try:
        browser.get(url + "/")
        assert "Protect your photos" in browser.find_element(By.TAG_NAME, "h1").text
        browser.find_element(By.ID, "files").send_keys(str(demo_photo))
        browser.find_element(By.ID, "go").click()
        verdict = WebDriverWait(browser, 240).until(
            ec.visibility_of_element_located((By.CSS_SELECTOR, ".result .verdict"))
        )
        assert "recognised" in verdict.text
        WebDriverWait(browser, 30).until(
            lambda b: b.execute_script(
                "return [...document.querySelectorAll('.result img')]"
                ".every(i => i.complete && i.naturalWidth > 0)"
            )
        )
        sizes = browser.execute_script(
            "return [...document.querySelectorAll('.result img')].map(i => i.naturalWidth)"
        )
        assert sizes == [512, 512, 512]  # before, after, difference
        got = browser.execute_async_script(
            "const done = arguments[0];"
            "fetch(document.querySelector('a.download').href).then(r => r.arrayBuffer())"
            ".then(b => done([...new Uint8Array(b.slice(0, 8))]))"
        )
        assert bytes(got) == b"\x89PNG\r\n\x1a\n"  # the download is the protected PNG
        assert browser.find_element(By.ID, "all").is_displayed()
        shot = tmp_path / "serve.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("JAXCLOAK_SCREENSHOT"):
            shutil.copy(shot, os.environ["JAXCLOAK_SCREENSHOT"])
    finally:
        browser.quit()


def test_twenty_concurrent_uploads_complete_or_get_429(server, demo_photo):
    url, root = server
    data = demo_photo.read_bytes()
    rss_before = _rss_mb()
    earlier = set(root.iterdir())

    def one(k: int) -> tuple[int, dict | None]:
        with httpx.Client(base_url=url, timeout=300) as c:
            r = c.post("/api/protect", files=[("files", (f"p{k}.png", data, "image/png"))])
            if r.status_code != 202:
                return r.status_code, None
            job_id, deadline = r.json()["id"], time.monotonic() + 300
            while (j := c.get(f"/api/jobs/{job_id}").json())["status"] not in ("done", "failed"):
                assert time.monotonic() < deadline, f"job {job_id} did not finish"
                time.sleep(0.2)
            return 202, j

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(one, range(20)))
    codes = [code for code, _ in outcomes]
    assert set(codes) <= {202, 429} and codes.count(202) >= 4, codes
    for _, job in outcomes:
        if job is not None:
            assert job["status"] == "done" and job["results"][0]["status"] == "protected"
    with httpx.Client(base_url=url) as c:
        health = c.get("/api/health").json()
    assert health["status"] == "ok" and health["queued"] == 0
    assert _rss_mb() - rss_before < 1500  # bounded: at most 4 jobs of one photo at a time
    jobs = [p for p in set(root.iterdir()) - earlier if p.is_dir()]
    assert len(jobs) == codes.count(202)  # one folder per accepted job, none for the refused
