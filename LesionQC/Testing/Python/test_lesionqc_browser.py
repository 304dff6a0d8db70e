"""The rating page in a real headless Chromium (Debian's ``chromium``, driven by Playwright; WebGL by SwiftShader).

A rater opens the page, gives their id, sees NiiVue draw the scan and the mask,
scores three items with the keyboard, reloads and resumes at the fourth; the
rater table holds exactly those rows. Screenshots at 1280x800 and 1920x1080 go
to the test's folder (``LESIONQC_SCREENSHOTS`` names another).
"""

import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from LesionQCLib.rater_table import load_rater_table, rater_table_path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="no Chromium on this machine (Debian: apt-get install chromium)")

#: Software WebGL: no GPU on CI machines.
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"]
LOAD_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the file's tests (each test opens its own pages or context)."""
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _open(browser, base, width, height, errors):
    page = browser.new_page(viewport={"width": width, "height": height})
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(base + "/")
    return page


def _wait_for_item(page, previous=""):
    """Until NiiVue has drawn an item other than ``previous`` (the page marks what it drew)."""
    # Selectors, not wait_for_function: the page's Content-Security-Policy forbids the eval that one needs.
    page.locator(f"body[data-loaded]:not([data-loaded='']):not([data-loaded='{previous}'])").wait_for(
        state="attached", timeout=LOAD_TIMEOUT_MS)
    return page.evaluate("document.body.dataset.loaded")


def _log_in(page, rater):
    """Give ``rater`` on the login form; return the first item NiiVue draws."""
    page.locator("#login").wait_for(state="visible")
    page.fill("#rater-id", rater)
    page.press("#rater-id", "Enter")
    return _wait_for_item(page)


def _expect_text(page, selector, text):
    """Until the element's text is ``text`` (a string, or a regular expression it must match)."""
    playwright_api.expect(page.locator(selector)).to_have_text(text, timeout=LOAD_TIMEOUT_MS)


def _canvas_pixels(page):
    return np.asarray(Image.open(io.BytesIO(page.locator("#gl").screenshot())).convert("RGB"), dtype=np.int16)


def test_a_rater_scores_three_items_by_keyboard_reloads_and_resumes(web_session, serve_session, browser, tmp_path):
    base = serve_session(web_session.folder)
    errors = []
    page = _open(browser, base, 1280, 800, errors)
    shown = _log_in(page, "kb")

    # The viewer drew: the canvas holds the scan (many grey levels) and the mask (its label colour).
    pixels = _canvas_pixels(page)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    grey = (np.abs(pixels[..., 0] - pixels[..., 1]) < 3) & (np.abs(pixels[..., 1] - pixels[..., 2]) < 3)
    assert len(np.unique(pixels[grey][:, 0])) > 100  # the scan
    overlay = (pixels[..., 0] - pixels[..., 2] > 60) & (pixels[..., 1] - pixels[..., 2] > 30)  # yellowish: label 1
    assert overlay.sum() > 200
    page.keyboard.press("o")  # overlay off: the mask's colour is gone
    page.wait_for_timeout(500)
    assert ((lambda p: (p[..., 0] - p[..., 2] > 60) & (p[..., 1] - p[..., 2] > 30))(_canvas_pixels(page))).sum() \
        < overlay.sum() / 10
    page.keyboard.press("o")

    assert page.text_content("#item-label") == "Item A (1 of 2)"
    for number in range(3):
        page.keyboard.press(str(3 + number % 2))
        _expect_text(page, "#progress-text", f"{number + 1} / 6 scored")
        page.keyboard.press("Enter")
        shown = _wait_for_item(page, shown)
    assert page.text_content("#case-label") == "Case 2 / 3" and page.text_content("#item-label") == "Item B (2 of 2)"

    page.reload()
    resumed = _wait_for_item(page)  # the cookie remembers the rater: no id to give again
    assert resumed == shown
    assert page.text_content("#case-label") == "Case 2 / 3" and page.text_content("#item-label") == "Item B (2 of 2)"
    assert page.text_content("#progress-text") == "3 / 6 scored"
    assert page.get_attribute("#progress", "aria-valuenow") == "3"

    table = load_rater_table(rater_table_path(web_session, "kb"), web_session)
    order = [(case.case_id, item.item_id) for case in web_session.cases for item in case.items]
    assert [(r.case, r.item, r.structure, r.score, r.revision) for r in table.ratings] == [
        (*order[0], "overall", 3, 1), (*order[1], "overall", 4, 1), (*order[2], "overall", 3, 1)]
    assert all(r.seconds >= 0 and r.flags == () and r.comment == "" for r in table.ratings)

    # k / j and the arrows move without scoring, also with the viewer focused; a scored item shows its score.
    page.click("#gl")
    position = page.evaluate("Array.from(nv.scene.crosshairPos)")
    page.keyboard.press("k")
    _expect_text(page, "#item-label", "Item A (1 of 2)")
    assert page.text_content(".structure[data-structure=overall] button.chosen b") == "3"
    page.keyboard.press("ArrowLeft")
    _expect_text(page, "#case-label", "Case 1 / 3")
    page.keyboard.press("j")
    page.keyboard.press("ArrowRight")
    _expect_text(page, "#item-label", "Item B (2 of 2)")
    _expect_text(page, "#case-label", "Case 2 / 3")
    assert len(load_rater_table(rater_table_path(web_session, "kb"), web_session).ratings) == 3
    assert page.evaluate("Array.from(nv.scene.crosshairPos)") == position  # the keys did not reach NiiVue
    assert not errors


def test_the_page_at_two_screen_sizes(web_session, serve_session, browser, tmp_path):
    """Screenshots for a person to look at; the controls are all on screen at both sizes."""
    folder = Path(os.environ.get("LESIONQC_SCREENSHOTS", tmp_path))
    base = serve_session(web_session.folder)
    errors = []
    for width, height in ((1280, 800), (1920, 1080)):
        page = _open(browser, base, width, height, errors)
        _log_in(page, f"screens{width}")
        page.keyboard.press("4")
        _expect_text(page, "#saved", re.compile(r"^Saved"))
        page.screenshot(path=str(folder / f"lesionqc-page-{width}x{height}.png"))
        for selector in ("#gl", "#structures", "#next-open", "#comment", "#progress", "#overlay-opacity"):
            box = page.locator(selector).bounding_box()
            assert box and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= width + 1 \
                and box["y"] + box["height"] <= height + 1, (selector, box, width)
        assert page.locator(".points button.chosen").count() == 1
        page.close()
    assert not errors


def test_a_second_tab_that_fell_behind_is_told_and_catches_up(web_session, serve_session, browser):
    base = serve_session(web_session.folder)
    errors = []
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    first, second = context.new_page(), context.new_page()
    for page in (first, second):
        page.on("pageerror", lambda error: errors.append(str(error)))
    first.goto(base + "/")
    first.fill("#rater-id", "tabs")
    first.press("#rater-id", "Enter")
    shown = _wait_for_item(first)
    second.goto(base + "/")  # same browser, same cookie: no id asked
    assert _wait_for_item(second) == shown
    first.keyboard.press("5")
    first.keyboard.press("Enter")
    _wait_for_item(first, shown)
    second.keyboard.press("1")  # still on the first item: refused, and the tab shows the current one
    _expect_text(second, "#error", re.compile("another tab"))
    _wait_for_item(second, shown)
    assert second.text_content("#item-label") == first.text_content("#item-label") == "Item B (2 of 2)"
    table = load_rater_table(rater_table_path(web_session, "tabs"), web_session)
    assert [r.score for r in table.ratings] == [5]
    assert not errors
    context.close()


def test_a_rater_follows_their_token_link_from_another_site(web_session, serve_session, browser):
    """The link arrives by e-mail: a page of another site links to the server (token mode)."""
    from LesionQCLib.web import TokenStore

    store = TokenStore.load(web_session)
    token = store.issue("remote")
    base = serve_session(web_session.folder, TokenStore.load(web_session))
    errors = []
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("pageerror", lambda error: errors.append(str(error)))
    # The mail page is served by Chromium's request routing: another site than 127.0.0.1.
    page.route("http://mail.example/", lambda route: route.fulfill(
        content_type="text/html", body=f'<a id="link" href="{base}/?token={token}">your LesionQC link</a>'))
    page.goto("http://mail.example/")
    page.click("#link")
    _wait_for_item(page)
    assert page.url == base + "/"  # the token left the address bar
    assert page.text_content("#rater-label") == "Rater remote" and not page.locator("#login").is_visible()
    assert "ratings/remote.csv" in page.text_content("#status")
    assert str(web_session.folder) not in page.content()  # the server's folders stay on the server
    page.keyboard.press("2")
    _expect_text(page, "#saved", re.compile(r"^Saved"))
    page.reload()
    _wait_for_item(page)
    assert page.text_content("#progress-text") == "1 / 6 scored"
    assert [r.score for r in load_rater_table(rater_table_path(web_session, "remote"), web_session).ratings] == [2]
    assert not errors
    page.close()


def test_the_viewer_scrolls_windows_and_fades_the_overlay(shared_web_session, serve_session, browser):
    """Wheel, right-drag, Reset window and the opacity slider act on NiiVue's real state."""
    base = serve_session(shared_web_session.folder)
    errors = []
    page = _open(browser, base, 1280, 800, errors)
    _log_in(page, "viewer")
    box = page.locator("#gl").bounding_box()
    centre = (box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)  # in the first tile
    position = page.evaluate("Array.from(nv.scene.crosshairPos)")
    page.mouse.move(*centre)
    for _ in range(5):
        page.mouse.wheel(0, 100)
    page.wait_for_timeout(300)
    assert page.evaluate("Array.from(nv.scene.crosshairPos)") != position  # another slice

    window = page.evaluate("[nv.volumes[0].cal_min, nv.volumes[0].cal_max]")
    page.mouse.move(*centre)
    page.mouse.down(button="right")
    page.mouse.move(centre[0] + 60, centre[1] + 40, steps=5)
    page.mouse.up(button="right")
    changed = page.evaluate("[nv.volumes[0].cal_min, nv.volumes[0].cal_max]")
    assert changed != window
    page.click("#reset-window")
    robust = page.evaluate("[nv.volumes[0].robust_min, nv.volumes[0].robust_max]")
    assert page.evaluate("[nv.volumes[0].cal_min, nv.volumes[0].cal_max]") == robust and robust != changed

    page.locator("#overlay-opacity").fill("0.2")
    assert page.evaluate("nv.volumes[1].opacity") == pytest.approx(0.2)
    page.keyboard.press("o")
    assert page.evaluate("nv.volumes[1].opacity") == 0
    assert not errors
    page.close()


def test_a_second_image_is_faded_in_under_the_mask(tmp_path, shared_data, serve_session, browser):
    """A case with image2 (here SCT's T2w with a fake lesion): as in Slicer, over the first, faded out at first."""
    from LesionQCLib.session import make_session

    folder = shared_data / "sct_testing_data/t2"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("case_id,image,image2,seg:one,seg:two\n"
                        f"sub-01,{folder / 't2.nii.gz'},{folder / 't2_fake_lesion.nii.gz'},"
                        f"{folder / 't2_seg-manual.nii.gz'},{folder / 't2_seg-manual.nii.gz'}\n")
    session = make_session(manifest, tmp_path / "session", seed=1, key_path=tmp_path / "key.json")
    base = serve_session(session.folder)
    errors = []
    page = _open(browser, base, 1280, 800, errors)
    _log_in(page, "two")
    assert page.evaluate("nv.volumes.length") == 3 and page.locator("#image2-row").is_visible()
    assert page.evaluate("[nv.volumes[1].opacity, nv.volumes[2].opacity]") == [0, 0.5]
    page.locator("#image2-opacity").fill("0.7")
    page.keyboard.press("o")
    assert page.evaluate("[nv.volumes[1].opacity, nv.volumes[2].opacity]") == [pytest.approx(0.7), 0]
    assert not errors
    page.close()
