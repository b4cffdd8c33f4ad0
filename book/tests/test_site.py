"""The built book (outputs/book/, `make book`) opened in headless Chromium.

Debian's /usr/bin/chromium (`apt-get install chromium`; `.ci/run` installs it) is driven by the
playwright package; `playwright install` is never run. The site is served on 127.0.0.1 and every
request elsewhere is refused and counted. For every notebook page: it renders, its outputs are there,
every chart it writes is shown (each image loaded, natural size above zero), its closing verdict is
shown in an output, and the page names its run. Every internal link of every page resolves (page
and anchor). A screenshot of each page (whole, or its first 20000 pixels, 8000 for the reference pages) lands in outputs/book-screenshots/.
"""
from __future__ import annotations

import functools
import http.server
import re
import sys
import threading
import urllib.parse
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book"))
import book  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = ROOT / "outputs" / "book-screenshots"
NOTEBOOKS = [p.stem for p in sorted(book.NOTEBOOKS.glob("*.ipynb"))]
PAGES = ["index", "results", "reliability", "colab", "install", "package", "api"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    if not (book.SITE / "index.html").exists():
        pytest.fail(f"{book.SITE} holds no built book: run `make book` first")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(book.SITE)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(site, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (what .ci/run does)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    outside: list[str] = []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=FLAGS, viewport={"width": 1280, "height": 900})

        def route(r):
            if urllib.parse.urlsplit(r.request.url).hostname == "127.0.0.1":
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        context.outside = outside
        yield context
        context.close()


def _open(browser, url: str):
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    response = page.goto(url, wait_until="load")
    assert response is not None and response.status == 200, f"{url}: HTTP {response and response.status}"
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    return page, errors


def _screenshot(page, name: str, cap: int = 8000) -> None:
    """The whole page, or its first cap pixels (the API page is far longer than anyone scrolls in a picture)."""
    height = page.evaluate("document.documentElement.scrollHeight")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, timeout=120_000,
                    clip=None if height <= cap else {"x": 0, "y": 0, "width": 1280, "height": cap})


def _broken_images(page) -> list[str]:
    return page.evaluate("Array.from(document.querySelectorAll('article img'))"
                         ".filter(i => !(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0))"
                         ".map(i => i.getAttribute('src'))")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_page_shows_its_run(browser, site, name):
    nb = nbformat.read(book.EXECUTED / f"{name}.ipynb", as_version=4)
    charts = {c for cell in nb.cells if cell.cell_type == "code" for c in book.CHART_NAME.findall(cell.source)}
    page, errors = _open(browser, f"{site}notebooks/{name}.html")
    try:
        assert page.locator("article h1").first.inner_text().startswith(name[:2]), "no notebook title"
        assert page.locator(".cell_output").count() > 0, f"{name}: no cell outputs rendered"
        stamp = page.locator(".admonition", has_text="The run on this page").inner_text()
        assert nb.metadata["gemma_run"]["commit"][:10] in stamp and nb.metadata["gemma_run"]["started"] in stamp
        shown = page.evaluate("Array.from(document.querySelectorAll('article img')).map(i => i.getAttribute('src'))")
        for chart in charts:
            assert any(src.endswith(chart) for src in shown), f"{name}: chart {chart} is not on the page"
        assert not _broken_images(page), f"{name}: images that did not load: {_broken_images(page)}"
        verdict = book.closing_output(nb)
        outputs = page.locator(".cell_output").all_inner_texts()
        assert any(verdict in text for text in outputs), f"{name}: closing verdict not shown: {verdict!r}"
        assert not errors, f"{name}: JavaScript errors: {errors}"
        _screenshot(page, name, cap=20000)
    finally:
        page.close()


@pytest.mark.parametrize("name", PAGES)
def test_page_renders(browser, site, name):
    page, errors = _open(browser, f"{site}{name}.html")
    try:
        assert page.locator("article h1").count() == 1, f"{name}: no title"
        assert len(page.locator("article").inner_text()) > 500, f"{name}: almost empty"
        assert not _broken_images(page), f"{name}: images that did not load: {_broken_images(page)}"
        assert not errors, f"{name}: JavaScript errors: {errors}"
        if name == "api":
            assert page.locator("dl.py.function").count() > 100, "the API page documents too few functions"
            assert page.locator("[id='gemma_helpers.train.train']").count() == 1
        _screenshot(page, name)
    finally:
        page.close()


def test_no_internal_link_is_broken(browser, site):
    """Every link of every page, followed from the index: the page answers 200 and the #anchor exists on it."""
    todo, seen, broken, ids, fragments = [site + "index.html"], set(), [], {}, []
    page = browser.new_page()
    try:
        while todo:
            url = todo.pop()
            if url in seen:
                continue
            seen.add(url)
            response = page.goto(url, wait_until="domcontentloaded")
            if response is None or response.status != 200:
                broken.append(f"{url}: HTTP {response and response.status}")
                continue
            if not url.endswith(".html"):
                continue
            ids[url] = set(page.evaluate("Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))
            for href in page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
                target, _, fragment = href.partition("#")
                if not target.startswith(site):
                    continue
                todo.append(target)
                if fragment:
                    fragments.append((url, target, urllib.parse.unquote(fragment)))
        for source, target, fragment in fragments:
            if target in ids and fragment not in ids[target]:
                broken.append(f"{source} -> {target}#{fragment}: no such anchor")
    finally:
        page.close()
    assert len([u for u in seen if re.search(r"/notebooks/\d\d_", u)]) == len(NOTEBOOKS)
    assert not broken, "broken internal links:\n" + "\n".join(sorted(set(broken)))


def test_nothing_was_fetched_from_outside(browser):
    assert not browser.outside, f"the site asked for {len(browser.outside)} outside URL(s): {browser.outside[:5]}"
