"""The console under its Content-Security-Policy, in Chromium: log in, the queue, an item,
approve it (htmx requests) with no CSP violation anywhere; and a page of another origin (another
port on the same host, so the session cookie goes along) cannot frame the signed-in console."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright, expect

if TYPE_CHECKING:
    from conftest import Served  # tests/console/conftest.py

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# Every CSP violation on the page, reported to the test through the console.
REPORT_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", function (e) {
  console.error("CSP violation: " + e.violatedDirective + " blocked " + e.blockedURI);
});
"""


@pytest.fixture
def attacker(served: Served) -> Iterator[str]:
    """A page on another port of the same host that frames a review item of the console."""
    target = f"{served.base_url}/reviews/{served.reviews['approve']}"
    html = (
        "<!doctype html><title>win a prize</title>"
        f'<iframe id="victim" src="{target}" width="1000" height="700"></iframe>'
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(html)))
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


async def _log_in(page: Page, served: Served) -> None:
    await page.goto(f"{served.base_url}/login")
    await page.get_by_label("User name").fill(served.user)
    await page.get_by_label("Password").fill(served.password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{served.base_url}/queue")


async def test_the_console_works_under_its_csp(chromium: str, served: Served) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = await browser.new_page()
            await page.add_init_script(REPORT_VIOLATIONS)
            problems: list[str] = []
            htmx_requests: list[str] = []

            def on_console(msg: ConsoleMessage) -> None:
                if msg.location.get("url", "").endswith("/favicon.ico"):
                    return  # the console has no icon; Chromium asks for one anyway
                if msg.type == "error" or "Content Security Policy" in msg.text:
                    problems.append(f"{msg.text} ({msg.location.get('url')})")

            page.on("console", on_console)
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on(
                "request",
                lambda r: htmx_requests.append(r.url) if r.headers.get("hx-request") else None,
            )

            first = await page.goto(f"{served.base_url}/login")
            assert first is not None
            assert "frame-ancestors 'none'" in first.headers["content-security-policy"]
            await _log_in(page, served)
            rows = page.locator("table.items tbody tr[data-nav-item]")
            await expect(rows).to_have_count(3)
            await page.locator(f"a[href='/reviews/{served.reviews['approve']}']").click()
            await expect(page.locator("#proposal")).to_contain_text("A-7000")
            await page.locator("#approve").click()
            await expect(page.locator(".flash.ok")).to_contain_text("Approved")
            # htmx did the navigation and the approval (hx-boost), and htmx is loaded
            assert await page.evaluate("typeof window.htmx") == "object"
            assert any(u.endswith("/approve") for u in htmx_requests), htmx_requests
            assert problems == []
        finally:
            await browser.close()


async def test_another_origin_cannot_frame_the_console(
    chromium: str, served: Served, attacker: str
) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            await _log_in(page, served)  # signed in: the cookie would go with a framed request
            blocked: list[str] = []
            evil = await context.new_page()
            evil.on(
                "console",
                lambda m: blocked.append(m.text) if "frame-ancestors" in m.text else None,
            )
            await evil.goto(attacker)
            await evil.wait_for_load_state("load")
            frames = [f for f in evil.frames if f != evil.main_frame]
            assert len(frames) == 1
            framed = frames[0]
            assert await framed.locator("#approve").count() == 0
            assert await framed.locator("#main").count() == 0
            assert blocked, "Chromium did not report the frame-ancestors refusal"
        finally:
            await browser.close()
