"""End to end: headless Debian Chromium against `forager view` on loopback, on a store the tests wrote.

Each test saves a screenshot of the page it checked (fixture `screenshots`; VIEWER_SCREENSHOTS=docs/images
refreshes the ones the docs show).
"""

from __future__ import annotations

from urllib.parse import urlencode


def shot(page, screenshots, name: str) -> None:
    page.screenshot(path=str(screenshots / f"viewer-{name}.png"), full_page=True)


def cells(page, selector: str) -> list[str]:
    return [t.strip() for t in page.locator(selector).all_inner_texts()]


def test_the_collection_pages_show_the_counts_the_store_holds(chromium_page, viewer_server, viewer_store, screenshots):
    page = chromium_page
    page.goto(viewer_server.url + "/collections")
    rows = page.locator("#collections tbody tr")
    assert rows.count() == len(viewer_store.collections) == 3
    for (policy, model), expected in viewer_store.collections.items():
        row = page.locator(f'#collections tr[data-policy="{policy}"][data-model="{model}"]')
        assert row.locator('[data-col="n"]').inner_text() == str(expected["n"])
        assert row.locator('[data-col="solved"]').inner_text() == str(expected["solved"])
        shown = {t.rsplit(" ", 1)[0]: int(t.rsplit(" ", 1)[1]) for t in cells(row, "[data-exit]")}
        assert shown == expected["exits"]
    assert page.locator("#time-split svg rect").count() >= 3 * len(viewer_store.collections)
    shot(page, screenshots, "collections")

    page.locator('#collections tr[data-model="qwen2.5-coder-7b"] a').click()
    qwen = viewer_store.collections[("openai", "qwen2.5-coder-7b")]
    assert page.locator('[data-figure="n"]').inner_text() == str(qwen["n"])
    assert page.locator('[data-figure="solved"]').inner_text() == str(qwen["solved"])
    assert page.locator("svg.plot").count() == 4  # steps, exit reasons, reward by repo, time split
    bars = page.locator('svg[aria-label="steps distribution"] rect title').all_text_contents()
    assert sum(int(t.rsplit(": ", 1)[1]) for t in bars) == qwen["n"]
    shot(page, screenshots, "collection")
    page.set_viewport_size({"width": 1100, "height": 620})  # the README's small one: the top of this page
    page.screenshot(path=str(screenshots / "viewer-small.png"))


def test_a_trajectory_page_shows_each_step_and_the_diff(chromium_page, viewer_server, viewer_store, screenshots):
    page = chromium_page
    page.goto(f"{viewer_server.url}/trajectories/{viewer_store.showcase_id}")
    steps = page.locator("li.step")
    assert steps.count() == 5
    assert [t.split()[1] for t in cells(page, "li.step .step-head")] == ["shell", "edit", "create", "shell", "submit"]
    assert "cat calc.py" in steps.nth(0).inner_text() and "return a - b" in steps.nth(0).locator(".output").inner_text()
    edit = steps.nth(1)
    assert edit.locator(".d-del").inner_text() == "-    return a - b"
    assert edit.locator(".d-add").inner_text() == "+    return a + b"
    assert edit.locator(".files .modified").inner_text() == "~ calc.py"
    assert steps.nth(2).locator(".d-add").inner_text() == "+checked add"
    assert "PYTHONHASHSEED=0" in steps.nth(2).inner_text()
    assert steps.nth(4).locator(".state-none").is_visible()
    assert page.locator("#final-patch .d-add").count() == 2
    assert cells(page, "#fail-to-pass td") == ["tests/test_calc.py::test_add", "passed"]
    assert cells(page, "#pass-to-pass td") == ["tests/test_calc.py::test_sub", "passed"]
    assert "difference of its arguments" in page.locator("#problem").inner_text()
    shot(page, screenshots, "trajectory")

    page.locator("#children a").click()  # the branch: its first two steps are the parent's
    assert page.url.endswith(viewer_store.branch_id)
    assert page.locator("#parent-link a").get_attribute("href") == f"/trajectories/{viewer_store.showcase_id}"
    assert page.locator("li.step.inherited").count() == 2 and page.locator("li.step").count() == 3


def test_a_filter_narrows_the_list(chromium_page, viewer_server, viewer_store, screenshots):
    page = chromium_page
    page.goto(viewer_server.url + "/trajectories")
    rows = page.locator("#trajectory-list tbody tr")
    assert rows.count() == viewer_store.trajectories == 19
    with page.expect_navigation():
        page.select_option("select[name=exit]", "max_turns")  # the page submits on change
    assert "exit=max_turns" in page.url
    assert rows.count() == viewer_store.count(exit="max_turns") == 7
    assert set(cells(page, "#trajectory-list tbody .tag[class*=exit-]")) == {"max_turns"}
    with page.expect_navigation():
        page.select_option("select[name=repo]", "calc")
    assert rows.count() == viewer_store.count(exit="max_turns", repo="calc") == 4
    assert page.locator("#total").inner_text() == "4"
    shot(page, screenshots, "trajectories")

    with page.expect_navigation():
        page.select_option("select[name=model]", "smollm2-135m")
    assert page.locator("#no-match").is_visible() and rows.count() == 0  # smollm2 never hit max_turns on calc


def test_search_finds_a_command(chromium_page, viewer_server, viewer_store):
    page = chromium_page
    page.goto(viewer_server.url + "/")
    page.fill("header input[name=q]", "stash")
    with page.expect_navigation():
        page.press("header input[name=q]", "Enter")
    assert page.locator("#trajectory-list tbody tr").count() == 1
    assert page.locator("#trajectory-list tbody tr").get_attribute("data-id") == viewer_store.branch_id


def test_a_trace_steps_through_frames_lines_and_locals(chromium_page, viewer_server, viewer_store, screenshots):
    page = chromium_page
    page.goto(f"{viewer_server.url}/traces/{viewer_store.trace_id}")
    assert page.locator("#frame-no").inner_text() == "0" and page.locator("#frame-event").inner_text() == "call"

    def local(name: str) -> str:
        return page.locator("#locals tr", has_text=name).locator("td").nth(1).inner_text()

    for _ in range(5):
        page.click("#next")
    assert page.locator("#frame-no").inner_text() == "5"
    assert page.locator("#frame-line").inner_text() == "13"
    assert page.locator("#listing .src-line.current").get_attribute("data-line") == "13"
    assert (local("items"), local("acc"), local("x")) == ("[1, 2]", "1", "2")
    assert cells(page, "#locals tr.changed td") == ["x", "2"]
    page.keyboard.press("ArrowRight")  # the loop's next test: acc became 3
    assert page.locator("#frame-no").inner_text() == "6" and local("acc") == "3"
    assert "step=6" in page.url
    page.click("#last")
    assert page.locator("#frame-value").inner_text() == "returned 3"
    page.click("#frames tr[data-i='3'] a")
    assert (page.locator("#frame-no").inner_text(), local("x")) == ("3", "1")
    shot(page, screenshots, "trace")

    page.goto(f"{viewer_server.url}/traces/{viewer_store.trace_id}?step=5")  # the same view without script
    assert page.locator("#frame-line").inner_text() == "13" and local("acc") == "1"


def test_catalog_and_task_pages(chromium_page, viewer_server, viewer_store, screenshots):
    page = chromium_page
    page.goto(viewer_server.url + "/catalog")
    images = page.locator("#images tbody tr")
    assert images.count() == 4
    assert images.filter(has_text="calc").locator(".tag").inner_text() == "ok"  # the later record won
    assert cells(page, "#failures tbody td:first-child") == ["install", "timeout"]
    shot(page, screenshots, "catalog")

    page.goto(viewer_server.url + "/tasks")
    sets = {r.split("\t")[0] + "/" + r.split("\t")[1]: r.split("\t") for r in cells(page, "#task-sets tbody tr")}
    assert set(sets) == {"calc/mutate-fix", "strutil/issue-fix"}
    assert sets["calc/mutate-fix"][2:6] == ["3", "1", "1", "1"]  # tasks, certified, failed, none
    shot(page, screenshots, "tasks")

    page.goto(viewer_server.url + "/tasks/set?" + urlencode({"repo": "calc", "kind": "mutate-fix"}))
    certs = cells(page, "#tasks tbody tr td:nth-child(6)")
    assert certs == ["passed (k=3)", "failed (k=3)", "none"]
    page.locator("#tasks a", has_text="calc__mf_1").first.click()
    assert "flaky (dropped)" in page.inner_text("main") and "tests/test_calc.py::test_time" in page.inner_text("main")


def test_the_overview_counts_and_names_the_skipped_files(chromium_page, viewer_server, viewer_store, screenshots):
    page = chromium_page
    page.goto(viewer_server.url + "/")
    assert page.locator("#trajectory-count").inner_text() == str(viewer_store.trajectories)
    assert "3 file(s) with 3 unreadable record(s) were skipped" in page.inner_text("main")
    shot(page, screenshots, "overview")
    page.click("text=see which")
    assert "trajectories/calc/torn.jsonl" in page.inner_text("main")
