"""The web console in a real browser (Debian's chromium, driven by playwright) against a real API
server: log in with a token, watch a machine's boot stage change live from the event stream,
approve a discovered MAC, set a next-boot-once, and see that event text stays text."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import RunningApi

from diskless.boot.events import BootEvent, BootStage
from diskless.boot.machines import parse_mac

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
MAC = "52:54:00:cc:00:01"
UNKNOWN = "52:54:00:cc:00:99"
# The machine's network is closed: without these, Chromium waits on refused background requests.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 15_000

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)
pytestmark = [
    # The browser is what is under test here, not the database: SQLite only.
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.timeout(180),
]


@pytest.fixture
def page(tmp_path: Path) -> Iterator[playwright_api.Page]:
    assert CHROMIUM is not None
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page
            assert errors == [], f"JavaScript errors: {errors}"
        finally:
            browser.close()


def _row(page: playwright_api.Page, mac: str) -> playwright_api.Locator:
    return page.locator(f'#machines tbody tr[data-mac="{mac}"]')


@needs_chromium
def test_console_shows_live_boot_stages_and_approves(
    api: RunningApi, page: playwright_api.Page
) -> None:
    expect = playwright_api.expect
    client = api.client()
    assert client.post("/machines", json={"mac": MAC, "hostname": "pc01"}).status_code == 201
    api.refresh()

    page.goto(api.url + "/")  # redirects to /console/
    assert page.url.endswith("/console/")
    page.fill("#token", "not-a-token")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_have_text("unknown or revoked token")
    page.fill("#token", api.token)
    page.click("#login-form button[type=submit]")

    row = _row(page, MAC)
    expect(row.locator(".hostname")).to_have_text("pc01")
    expect(row.locator(".stage-label")).to_have_text("not seen")
    expect(page.locator("#link")).to_have_attribute("data-state", "live")

    # Live, without a reload: each recorded event moves the machine's stage.
    mac = parse_mac(MAC)
    api.record(BootEvent(mac, BootStage.DHCP_OFFER, time.time(), "192.0.2.10"))
    expect(row.locator(".stage-label")).to_have_text("DHCP")
    api.record(BootEvent(mac, BootStage.ISCSI_LOGIN, time.time(), "<img src=x onerror=alert(1)>"))
    expect(_row(page, MAC).locator(".stage-label")).to_have_text("iSCSI login")
    newest = page.locator("#feed li").first
    expect(newest).to_contain_text("pc01 iscsi-login")
    # Event text is shown as text, never parsed as markup.
    expect(newest.locator(".detail")).to_have_text("<img src=x onerror=alert(1)>")
    assert page.locator("#feed img").count() == 0

    # Boot once into the local disk, through the row's action.
    _row(page, MAC).locator("select").select_option("local")
    _row(page, MAC).locator("button.set-once").click()
    expect(_row(page, MAC).locator(".once")).to_have_text("local")
    assert client.get("/machines/pc01").json()["next_boot_once"] == {"kind": "local"}

    # Reset asks first; the API's refusal (pc01 has no disk yet) is shown, not swallowed.
    page.once("dialog", lambda dialog: dialog.accept())
    _row(page, MAC).locator("button.reset-disk").click()
    expect(page.locator("#notice.error")).to_contain_text("/machines/pc01/disk/reset: 404")

    # An unknown MAC asks to boot: it shows up under Discovered and is approved from there.
    api.record(BootEvent(parse_mac(UNKNOWN), BootStage.DISCOVERED, time.time(), "", known=False))
    found = page.locator(f'#discovered tbody tr[data-mac="{UNKNOWN}"]')
    expect(found).to_have_count(1)
    found.locator("input").fill("lab-07")
    found.locator("button.approve").click()
    expect(_row(page, UNKNOWN).locator(".hostname")).to_have_text("lab-07")
    expect(found).to_have_count(0)
    assert client.get("/machines/lab-07").json()["mac"] == UNKNOWN

    # The token lives in this tab's sessionStorage: a reload needs no new login.
    page.reload()
    expect(_row(page, MAC).locator(".stage-label")).to_have_text("iSCSI login")


def test_console_assets_are_served_with_a_strict_policy(api: RunningApi) -> None:
    client = api.client(token=None)
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307
    assert root.headers["location"] == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script" in page.text
    assert "script-src" not in page.text  # no inline policy games: the header rules
    script = client.get("/console/console.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert client.get("/console/../app.py").status_code == 404
    assert client.get("/console/__init__.py").status_code == 404
    # The console is not part of the API's OpenAPI document.
    assert not any(
        path.startswith("/console") for path in client.get("/openapi.json").json()["paths"]
    )


@needs_chromium
def test_the_sse_parser_handles_frames_split_anywhere(
    api: RunningApi, page: playwright_api.Page
) -> None:
    page.goto(api.url + "/console/")
    stream = 'retry: 3000\r\n: subscribed\r\n\r\nevent: boot\nid: 1\ndata: {"a":\ndata: 1}\n\n'
    stream += "data: plain\n\n: keep-alive\n\nevent: boot\r\ndata:no-space\r\n\r\n"
    # Fed whole, then one character at a time: the frames must come out the same.
    result = page.evaluate(
        """async (text) => {
            const { SseParser } = await import("./sse.js");
            const run = (chunks) => {
                const frames = [], comments = [];
                const parser = new SseParser((f) => frames.push(f), (c) => comments.push(c));
                for (const chunk of chunks) parser.feed(chunk);
                return { frames, comments, retry: parser.retry };
            };
            return [run([text]), run([...text])];
        }""",
        stream,
    )
    whole, split = result
    assert whole == split
    assert whole["frames"] == [
        {"event": "boot", "data": '{"a":\n1}', "id": "1"},
        {"event": "message", "data": "plain", "id": None},
        {"event": "boot", "data": "no-space", "id": None},
    ]
    assert whole["comments"] == ["subscribed", "keep-alive"]
    assert whole["retry"] == 3000
