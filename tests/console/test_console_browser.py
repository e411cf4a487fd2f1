"""The console in a real browser: log in through the form, approve one item, edit another,
reveal the card number of a third's customer and reject it (keyboard shortcuts included),
then a worker resumes the three runs with those decisions. A screenshot of the queue goes
to /tmp/codara-queue.png."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from playwright.async_api import Page, async_playwright, expect

import codara

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
SCREENSHOT = "/tmp/codara-queue.png"  # noqa: S108 (where the reviewer looks at it)
SELECTED = re.compile(r"\bselected\b")
CARD = "4111 1111 1111 1111"  # in the reject item's customer (conftest's _seed)


async def _open_item(page: Page, served: Served, label: str) -> None:
    await page.goto(f"{served.base_url}/reviews/{served.reviews[label]}")
    await expect(page.locator("h1")).to_contain_text("refunds · refund")
    await expect(page.locator("#proposal")).to_contain_text("A-700")


async def test_review_in_the_browser(chromium: str, served: Served, worker_app: codara.App) -> None:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            await page.goto(f"{served.base_url}/queue")  # not signed in: to the login form
            await expect(page).to_have_url(f"{served.base_url}/login?next=%2Fqueue")
            await page.get_by_label("User name").fill(served.user)
            await page.get_by_label("Password").fill(served.password)
            await page.get_by_role("button", name="Log in").click()
            await expect(page).to_have_url(f"{served.base_url}/queue")
            rows = page.locator("table.items tbody tr[data-nav-item]")
            await expect(rows).to_have_count(3)
            await expect(page.locator(".counts .count .n")).to_have_text("3")
            await page.screenshot(path=SCREENSHOT, full_page=True)

            # j/k move through the queue
            await page.keyboard.press("j")
            await expect(rows.nth(0)).to_have_class(SELECTED)
            await page.keyboard.press("j")
            await expect(rows.nth(1)).to_have_class(SELECTED)
            await page.keyboard.press("k")
            await expect(rows.nth(0)).to_have_class(SELECTED)

            # approve with the keyboard on the item page
            await _open_item(page, served, "approve")
            await expect(page.locator("#decide")).to_be_visible()
            await page.keyboard.press("a")
            await expect(page.locator(".flash.ok")).to_contain_text("Approved")

            # edit: 'e' opens the editor with the proposal JSON focused
            await _open_item(page, served, "edit")
            await page.keyboard.press("e")
            editor = page.locator("#proposal-json")
            await expect(editor).to_be_focused()
            proposal = json.loads(await editor.input_value())
            assert proposal == {"amount": 50.0, "note": "refund order A-7001"}
            await editor.fill(json.dumps({"amount": 25.0, "note": "half: one item kept"}))
            await page.get_by_role("button", name="Approve edited proposal").click()
            await expect(page.locator(".flash.ok")).to_contain_text("edited proposal")

            # reveal: the customer's card number, for a role [privacy] reveal allows
            await _open_item(page, served, "reject")
            assert CARD not in await page.content()
            personal = page.locator("#personal")
            await personal.get_by_label(re.compile("Why you need to see <card:")).fill("fraud list")
            await personal.get_by_role("button", name="Show card").click()
            await expect(page.locator("#revealed-value")).to_have_text(CARD)
            await _open_item(page, served, "reject")  # the next view: the token again
            assert CARD not in await page.content()
            await expect(page.locator("table.rows td", has_text="reveal").first).to_be_visible()

            # reject: 'r' focuses the coded reasons
            await _open_item(page, served, "reject")
            await page.keyboard.press("r")
            await expect(page.locator("#reason-code")).to_be_focused()
            await page.locator("#reason-code").select_option("duplicate")
            await page.locator("#reject-form textarea[name=comment]").fill("paid last week")
            await page.get_by_role("button", name="Reject", exact=True).click()
            await expect(page.locator(".flash.ok")).to_contain_text("Rejected")
            await expect(page.locator("table.items td.empty")).to_contain_text("Nothing to review")
            assert errors == []
        finally:
            await browser.close()

    await worker_app.work(until_idle=True)
    outputs = {label: await worker_app.output(r) for label, r in served.runs.items()}
    assert outputs["approve"] == {
        "outcome": "approved",
        "amount": 40.0,
        "note": "refund order A-7000",
        "reason_code": None,
        "comment": None,
    }
    assert outputs["edit"]["outcome"] == "edited"
    assert outputs["edit"]["amount"] == 25.0
    assert outputs["edit"]["note"] == "half: one item kept"
    assert outputs["reject"]["outcome"] == "rejected"
    assert outputs["reject"]["reason_code"] == "duplicate"
    assert outputs["reject"]["comment"] == "paid last week"
