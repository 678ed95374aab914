"""The site: built with -W from the committed results, every internal link resolves, and a real browser
(headless Debian Chromium) sees the dashboard's 98 papers and the exemplar pages' figures and claims."""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from repro.site.build import build_site

ROOT = Path(__file__).resolve().parents[2]
EXEMPLARS = ("infinite-width/ntk", "bayesian/pfn")
pytestmark = pytest.mark.xdist_group("site")


@pytest.fixture(scope="module")
def html_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    index = build_site(ROOT, builddir=out, quiet=True)  # raises on any warning (-W -n --keep-going)
    assert index.is_file()
    return index.parent


def test_every_internal_link_and_image_resolves(html_dir):
    ref = re.compile(r'(?:href|src)="([^"]+)"')
    broken = []
    pages = [p for p in html_dir.rglob("*.html") if not {"_static", "_sources"} & set(p.relative_to(html_dir).parts)]
    assert len(pages) > 100
    for page in pages:
        for target in ref.findall(page.read_text(encoding="utf-8")):
            url = urlparse(target)
            if url.scheme or target.startswith(("#", "mailto:", "//")) or not url.path:
                continue
            if not (page.parent / unquote(url.path)).resolve().exists():
                broken.append(f"{page.relative_to(html_dir)} -> {target}")
    assert not broken, "broken links:\n" + "\n".join(broken[:20])


def test_exemplar_pages_carry_header_figures_and_claims(html_dir):
    for doc in EXEMPLARS:
        page = (html_dir / "book" / "papers" / f"{doc}.html").read_text(encoding="utf-8")
        assert "Run record" in page and "Paper vs ours" in page, doc
        assert "repro-claims" in page, f"{doc}: no claims table from the notebook"
        assert re.search(r'<img[^>]+src="[^"]+\.png"', page), f"{doc}: no figure"
        assert "stale" in page or "current" in page


@pytest.fixture(scope="module")
def browser(html_dir):
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(chromium).exists() and Path(driver_path).exists()):
        pytest.fail("Debian's chromium and chromium-driver are needed (make browser-deps installs them)")
    os.environ["SE_OFFLINE"] = "true"  # never let selenium fetch a browser
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(html_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    driver.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield driver
    driver.quit()
    server.shutdown()


@pytest.mark.browser
def test_dashboard_lists_all_98_papers_in_a_browser(browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{browser.base}/book/dashboard.html")
    rows = browser.find_elements(By.CSS_SELECTOR, "article table tbody tr")
    assert len(rows) == 98
    text = browser.find_element(By.TAG_NAME, "article").text
    assert "planned" in text and "Neural Tangent Kernel" in text


@pytest.mark.browser
@pytest.mark.parametrize("doc", EXEMPLARS)
def test_exemplar_page_shows_a_rendered_figure_and_claims_table(browser, doc):
    from selenium.webdriver.common.by import By

    browser.get(f"{browser.base}/book/papers/{doc}.html")
    images = browser.find_elements(By.CSS_SELECTOR, "article img")
    assert any(browser.execute_script("return arguments[0].naturalWidth", img) > 100 for img in images)
    claims = browser.find_elements(By.CSS_SELECTOR, "table.repro-claims tbody tr")
    assert claims and all(r.text.strip() for r in claims)
    assert "Run record" in browser.find_element(By.TAG_NAME, "article").text


@pytest.mark.browser
def test_following_the_dashboard_link_opens_the_paper_page(browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{browser.base}/book/dashboard.html")
    browser.find_element(By.PARTIAL_LINK_TEXT, "Neural Tangent Kernel").click()
    assert browser.current_url.endswith("/book/papers/infinite-width/ntk.html")
    assert "Neural Tangent Kernel" in browser.title
