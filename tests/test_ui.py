"""The web page at /ui, driven in headless Chromium (Debian's, through Playwright): sign in with a key, submit a
problem from the form, watch the job run live over the event stream, and see its attempts, solution and curve."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from service_env import KEYS, ApiServer, Workers, api_settings

from sdpo_core.methods import METHODS
from service.client import Client

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EASY = {"id": "say-a", "prompt": "Say a", "verifier": {"type": "regex", "pattern": "a", "target": "completion",
                                                         "full_match": False}}


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "chromium is not installed: run ./scripts/setup.sh"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_ui_is_served_with_a_strict_content_security_policy(redis_url):
    with ApiServer(api_settings(redis_url, f"ui-static-{os.getpid()}")) as api:
        page = httpx.get(f"{api.url}/ui", follow_redirects=True)
        assert page.status_code == 200 and str(page.url).endswith("/ui/")
        assert '<script src="app.js">' in page.text and "<form id=\"key-form\">" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "unsafe-inline" not in page.headers["content-security-policy"]
        for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
            response = httpx.get(f"{api.url}/ui/{asset}")
            assert response.status_code == 200 and kind in response.headers["content-type"]
        assert "/ui" not in httpx.get(f"{api.url}/openapi.json").json()["paths"]  # not part of the API


def test_submit_from_the_page_and_watch_the_job_finish_live(browser, redis_url, tiny_model_dir, tmp_path):
    from playwright.sync_api import expect

    prefix = f"ui-{os.getpid()}"
    workers = Workers(redis_url, prefix, tiny_model_dir, tmp_path / "ckpt", tmp_path)
    with ApiServer(api_settings(redis_url, prefix)) as api:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{api.url}/ui")

        # A wrong key is refused and the page says so; the right one opens the app.
        page.fill("#api-key", "not-a-key")
        page.click("#key-form button")
        page.wait_for_selector("#key-error:not([hidden])")
        assert "refused" in page.text_content("#key-error")
        page.fill("#api-key", KEYS["alice"])
        page.click("#key-form button")
        page.wait_for_selector("#app:not([hidden])")
        assert page.evaluate("sessionStorage.getItem('sdpo.apiKey')") == KEYS["alice"]

        # The method select lists the API's methods (the registry, through the OpenAPI enum), auto selected.
        expect(page.locator("#method option")).to_have_count(len(METHODS))
        assert page.locator("#method option").all_text_contents() == list(METHODS)
        assert page.input_value("#method") == "auto"

        # Submit while no worker runs: the job waits queued and the page follows its event stream from the start.
        page.fill("#problem", json.dumps(EASY))
        page.fill("#budget", "16")
        page.fill("#settings", json.dumps({"attempts_per_step": 4, "max_new_tokens": 8}))
        page.click("#submit-form button[type=submit]")
        page.wait_for_selector("#job-view:not([hidden])")
        expect(page.locator("#job-live")).to_contain_text("following")
        job_id = page.text_content("#job-id")
        assert page.text_content("#job-status") == "queued"
        assert page.locator(f"#jobs tr[data-id='{job_id}']").count() == 1

        workers.start()
        try:
            expect(page.locator("#job-status")).to_have_text("succeeded", timeout=120_000)
            page.wait_for_selector("#job-curve svg polyline.curve-line")
            with Client(api.url, KEYS["alice"]) as client:  # a batch, submitted with the SDK
                batch = client.solve_batch([EASY, {**EASY, "id": "say-a-again"}], budget=8, timeout=120, poll_s=0.3,
                                           settings={"attempts_per_step": 4, "max_new_tokens": 8}).batch
        finally:
            workers.stop_all()

        events = page.locator("#events li").all_text_contents()
        assert any("status: running" in e for e in events), events  # seen live, over SSE
        assert any("progress: method step 1" in e for e in events), events
        assert "status: succeeded" in events[-1]
        rows = page.locator("#attempts tbody tr")
        assert rows.count() >= 1 and page.locator("#attempts tbody tr.solved").count() >= 1
        assert page.locator("#attempts tbody tr.solved td pre").first.text_content()  # the attempt's text
        assert "Verified at attempt" in page.text_content("#solution")
        assert page.text_content("#solution .solution-text").strip()
        labels = page.locator("#job-curve svg text").all_text_contents()
        assert "auto" in labels and "best-of-k" in labels  # the form's default method
        assert page.locator("#job-curve svg polyline.curve-line").count() == 2
        assert page.text_content("#job-curve-note")
        expect(page.locator(f"#jobs tr[data-id='{job_id}'] .status")).to_have_text("succeeded")  # list refreshed

        shot = tmp_path / "ui.png"
        page.screenshot(path=str(shot), full_page=True)

        page.click("#refresh")
        page.locator("#batches tbody tr").first.click()
        expect(page.locator("#batch-id")).to_have_text(batch.id)
        expect(page.locator("#batch-status")).to_have_text("completed")
        expect(page.locator("#batch-curve svg polyline.curve-line")).to_have_count(2)
        expect(page.locator("#batch-jobs tbody tr")).to_have_count(2)
        page.screenshot(path=str(tmp_path / "ui-batch.png"), full_page=True)
        assert not errors, errors
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, f"screenshot of {len(data)} bytes"
