"""``lesionqc serve``: the rating page's server over real HTTP on 127.0.0.1 (waitress + Flask).

What the page sends goes through the review controller into the rater's table; the
wire tells nothing of the sources; the command prints its address and the tokens once.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import requests

from LesionQCLib.rater_table import load_rater_table, rater_table_path
from LesionQCLib.review_controller import ReviewController
from LesionQCLib.session import load_key

SOURCES = ("manualRef", "modelOut")  # as in conftest.py's web_session


def _rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def _login(base, rater):
    client = requests.Session()
    answer = client.post(f"{base}/api/login", json={"rater": rater})
    assert answer.status_code == 200, answer.text
    return client, answer.json()


def _act(client, base, state, **action):
    return client.post(f"{base}/api/action", json={"item": state["item"], **action})


def test_scores_from_the_page_land_in_the_rater_table_and_resume(web_session, serve_session):
    base = serve_session(web_session.folder)
    client, state = _login(base, "alice")
    assert (state["rater"], state["case_label"], state["item_label"]) == ("alice", "Case 1 / 3", "Item A (1 of 2)")
    assert (state["done_count"], state["item_count"], state["active_structure"]) == (0, 6, "overall")
    assert [p["anchor"] for p in state["scale"]["points"]] == ["very poor", "poor", "acceptable", "good", "excellent"]

    answer = _act(client, base, state, action="score", value=4, comment="sharp\nedges")
    assert answer.status_code == 200, answer.text
    state = answer.json()
    assert state["scores"]["overall"] == 4 and state["done_count"] == 1 and state["saved"].startswith("Saved: overall")
    state = _act(client, base, state, action="flag", flag="image_artefact", checked=True).json()
    assert state["flags"] == ["image_artefact"]
    state = _act(client, base, state, action="next_open").json()
    assert state["item_label"] == "Item B (2 of 2)"
    assert state["flags"] == ["image_artefact"]  # a case flag holds for every item of the case

    # The same rows as the Slicer panel writes: the comment typed first, then the score, then the case flag.
    rows = _rows(rater_table_path(web_session, "alice"))
    first = web_session.cases[0].case_id
    assert [(r["case"], r["item"], r["structure"], r["score"], r["flags"]) for r in rows] == [
        (first, "A", "overall", "", ""), (first, "A", "overall", "4", ""),
        (first, "A", "overall", "4", "image_artefact"), (first, "B", "overall", "", "image_artefact")]
    assert rows[1]["comment"] == "sharp edges" and float(rows[1]["seconds"]) >= 0

    # A second client of the same rater (a reload, another browser) resumes where the rater is.
    _, again = _login(base, "alice")
    assert again["item_label"] == "Item B (2 of 2)" and again["done_count"] == 1


def test_a_browser_score_and_a_slicer_score_make_one_analysis(web_session, serve_session, mrml_scene, tmp_path):
    """Rater 'web' scores through HTTP, rater 'slicer' through the controller on a real MRML scene."""
    from LesionQCLib.analysis import analyze_session

    base = serve_session(web_session.folder)
    client, state = _login(base, "web")
    slicer_side = ReviewController(mrml_scene)
    slicer_side.open_session(web_session.folder, "slicer")
    key = load_key(tmp_path / "private" / "key.json", web_session)
    for _ in range(6):
        case, item = slicer_side.state.case.case_id, slicer_side.state.item.item_id
        assert (state["case_label"], state["item_label"]) == (f"Case {slicer_side.state.progress_text}",
                                                              slicer_side.state.item_text)
        value = 5 if key.items[case][item] == SOURCES[0] else 2
        state = _act(client, base, state, action="score", value=value).json()
        state = _act(client, base, state, action="next").json()
        slicer_side.score_key(value)
        slicer_side.navigate("next")
    slicer_side.close()
    web_rows = _rows(rater_table_path(web_session, "web"))
    slicer_rows = _rows(rater_table_path(web_session, "slicer"))
    assert list(web_rows[0]) == list(slicer_rows[0])  # one table format
    strip = ("rater", "started", "submitted", "seconds")
    assert [{k: v for k, v in r.items() if k not in strip} for r in web_rows] == \
        [{k: v for k, v in r.items() if k not in strip} for r in slicer_rows]
    result = analyze_session(web_session.folder, tmp_path / "results", key_path=tmp_path / "private" / "key.json")
    assert set(result.ratings["rater"]) == {"web", "slicer"} and len(result.ratings) == 12


def test_the_wire_tells_nothing_of_the_source(web_session, serve_session, tmp_path):
    base = serve_session(web_session.folder)
    client, state = _login(base, "alice")
    key = load_key(tmp_path / "private" / "key.json", web_session)
    names = set(SOURCES) | {c.case_id for c in web_session.cases} | {"A", "B", "key", "manual", "model"}
    seen = {}
    for _ in range(2):
        answer = client.get(f"{base}/api/state")
        assert not [n for n in names if n in json.dumps(state["volumes"])]
        mask_url = state["volumes"]["mask"]
        assert re.fullmatch(r"/volume/[0-9a-f]{32}\.nii", mask_url)
        response = client.get(base + mask_url)
        assert response.status_code == 200
        assert {k.lower() for k in response.headers} <= {
            "content-type", "content-length", "cache-control", "referrer-policy", "x-content-type-options",
            "x-frame-options", "content-security-policy", "date", "server", "vary"}
        assert response.headers["Content-Type"] == "application/octet-stream"
        seen[key.items[web_session.cases[0].case_id][state["item_label"].split()[1]]] = response
        state = _act(client, base, answer.json(), action="next").json()
    manual, model = seen[SOURCES[0]].content, seen[SOURCES[1]].content
    assert len(manual) == len(model) and manual != model  # same size, different voxels
    header_bytes = 348
    assert manual[:header_bytes] == model[:header_bytes]  # the whole NIfTI header is the same
    # What was sent is the item's mask, voxel for voxel, on the scan's grid.
    sent = nib.Nifti1Image.from_bytes(model)
    case = web_session.cases[0]
    model_item = next(item for item in case.items if key.items[case.case_id][item.item_id] == SOURCES[1])
    stored = nib.load(str(model_item.path))
    assert np.array_equal(np.asanyarray(sent.dataobj), np.asanyarray(stored.dataobj))
    assert np.allclose(sent.affine, stored.affine)
    # Every answer has the same keys, logged in or not.
    anonymous = requests.get(f"{base}/api/state").json()
    assert set(anonymous) == set(state) and anonymous["item"] is None and anonymous["rater"] is None
    # Another rater sees other ids for the same files.
    _, bob = _login(base, "bob")
    assert bob["volumes"]["image"] != client.get(f"{base}/api/state").json()["volumes"]["image"]


def test_serve_prints_the_address_and_each_token_once(web_session, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    command = [sys.executable, "-m", "LesionQCLib.cli", "serve", str(web_session.folder), "--port", "0"]

    def run(*extra):
        process = subprocess.Popen(command + list(extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, env=env)
        lines = []
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = process.stdout.readline()
                lines.append(line)
                if line.startswith("serving on") or line.startswith("open ") or not line:
                    break
            address = re.search(r"http://[^/ ]+/", "".join(lines))
            status = requests.get(address.group(0), timeout=10).status_code if address else None
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=30)
        return "".join(lines), status

    output, status = run()
    assert re.search(r"open http://127\.0\.0\.1:\d+/ in a browser", output), output
    assert status == 200
    output, status = run("--host", "localhost", "--rater", "alice", "--rater", "bob")
    tokens = dict(re.findall(r"(\w+): http://localhost:\d+/\?token=([\w-]+)", output))
    assert set(tokens) == {"alice", "bob"} and status == 401, output
    stored = (web_session.folder / "serve-tokens.json").read_text()
    assert not [token for token in tokens.values() if token in stored] and "scrypt" in stored
    output, _ = run("--host", "localhost", "--rater", "alice")
    assert "token=" not in output and "alice" in output  # printed once; the old token still works
    from LesionQCLib.session import SessionView
    from LesionQCLib.web import TokenStore

    assert TokenStore.load(SessionView.load(web_session.folder)).rater_of(tokens["alice"]) == "alice"
    assert load_rater_table(rater_table_path(web_session, "alice"), web_session).ratings == []
