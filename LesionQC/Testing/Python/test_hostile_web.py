"""``lesionqc serve`` under attack: every request is refused or handled, and the rater tables stay intact.

Real HTTP to the real server (waitress + Flask on 127.0.0.1). Raw requests go
through ``http.client`` so that ``..`` and encoded dots reach the server as sent.
"""

import http.client
import os
import socket
import subprocess
import sys
import threading
from urllib.parse import urlsplit

import pytest
import requests

from LesionQCLib.errors import SessionError
from LesionQCLib.rater_table import load_rater_table, rater_table_path
from LesionQCLib.session import SessionView
from LesionQCLib.web import TokenStore


def _raw_get(base, path, headers=None):
    """GET ``path`` exactly as written (no normalisation by a client library)."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _login(base, rater):
    client = requests.Session()
    answer = client.post(f"{base}/api/login", json={"rater": rater})
    assert answer.status_code == 200, answer.text
    return client, answer.json()


def _table_bytes(session, rater):
    path = rater_table_path(session, rater)
    return path.read_bytes() if path.exists() else b""


@pytest.fixture
def key_inside(web_session):
    """A copy of the key inside the session folder, as ``--key-inside-session`` puts it: never to be served."""
    key = web_session.folder / "key.json"
    key.write_bytes((web_session.folder.parent / "private" / "key.json").read_bytes())
    return key


def test_no_path_leads_outside_the_volumes(web_session, serve_session, key_inside):
    base = serve_session(web_session.folder)
    client, state = _login(base, "alice")
    cookie = {"Cookie": "; ".join(f"{c.name}={c.value}" for c in client.cookies)}
    secret = key_inside.read_bytes()
    attempts = [
        "/key.json", "/session.json", "/ratings/alice.csv", "/cases/" + web_session.cases[0].case_id + "/A.nii",
        "/static/../key.json", "/static/..%2fkey.json", "/static/%2e%2e/%2e%2e/key.json", "/static/%2e%2e%2fkey.json",
        "/volume/../key.json", "/volume/..%2f..%2fsession-key.json", "/volume/%2e%2e%2fkey.json",
        "/volume/..%252fkey.json", "/static/lesionqc.js/../../key.json", "/static/..\\key.json",
        "/static/NIIVUE_LICENSE.txt", "/static/%2Fetc%2Fpasswd", "//etc/passwd", "/volume/" + "0" * 32 + ".nii",
        "/api/../key.json", "/%2e%2e/session-key.json",
    ]
    for path in attempts:
        status, body = _raw_get(base, path, cookie)
        assert status in (400, 404), (path, status)
        assert secret not in body and b"modelOut" not in body and b"manualRef" not in body, path
    # A volume id of the right rater but with another suffix is no volume either.
    mask = state["volumes"]["mask"]
    assert _raw_get(base, mask.replace(".nii", ".nii.gz"), cookie)[0] == 404
    assert _raw_get(base, mask, cookie)[0] == 200


def test_a_link_swapped_in_after_the_start_is_not_followed(web_session, serve_session, key_inside):
    base = serve_session(web_session.folder)
    client, state = _login(base, "alice")
    case = web_session.cases[0]
    for item in case.items:
        item.path.unlink()
        item.path.symlink_to(key_inside)
    for _ in case.items:
        response = client.get(base + state["volumes"]["mask"])
        assert response.status_code == 404 and key_inside.read_bytes() not in response.content
        state = client.post(f"{base}/api/action", json={"item": state["item"], "action": "next"}).json()


def test_a_damaged_item_file_is_a_plain_error_and_the_server_goes_on(web_session, serve_session):
    base = serve_session(web_session.folder)
    client, state = _login(base, "alice")
    shown = web_session.cases[0].items[0].path
    shown.write_bytes(shown.read_bytes()[:400])  # cut short after the header
    response = client.get(base + state["volumes"]["mask"])
    assert response.status_code == 500 and response.headers["Content-Type"].startswith("text/plain")
    assert str(web_session.folder) not in response.text and shown.name not in response.text
    state = client.post(f"{base}/api/action", json={"item": state["item"], "action": "next"}).json()
    assert client.get(base + state["volumes"]["mask"]).status_code == 200  # the case's other item still shows


@pytest.fixture
def token_server(web_session, serve_session):
    store = TokenStore.load(web_session)
    tokens = {rater: store.issue(rater) for rater in ("alice", "bob")}
    # A non-loopback Host is what a lab server gets; the test server still listens on 127.0.0.1.
    return serve_session(web_session.folder, TokenStore.load(SessionView.load(web_session.folder))), tokens


def test_without_a_valid_token_nothing_is_served(token_server):
    base, tokens = token_server
    for path in ("/", "/static/lesionqc.js", "/static/niivue.umd.js", "/api/state", "/volume/" + "0" * 32 + ".nii",
                 "/?token=", "/?token=" + tokens["alice"][:-1] + "x", "/?token=" + tokens["alice"].upper()):
        response = requests.get(base + path, allow_redirects=False)
        assert response.status_code == 401, path
        assert "LesionQC" not in response.text and "niivue" not in response.text.lower()
    for body in ({"rater": "alice"}, {"token": tokens["alice"]}):  # ids and tokens in a body decide nothing
        assert requests.post(f"{base}/api/login", json=body).status_code == 401
    assert requests.post(f"{base}/api/action", json={"action": "score", "value": 3}).status_code == 401

    client = requests.Session()
    first = client.get(f"{base}/?token={tokens['bob']}", allow_redirects=False)
    assert first.status_code == 303 and first.headers["Location"] == "/"  # the token leaves the address bar
    assert client.get(f"{base}/api/state").json()["rater"] == "bob"
    # The page cannot name another rater: the token decided.
    assert client.post(f"{base}/api/login", json={"rater": "alice"}).json()["rater"] == "bob"


def test_a_damaged_token_file_is_named_and_no_token_is_reissued_over_it(web_session):
    store = TokenStore.load(web_session)
    token = store.issue("alice")
    path = web_session.folder / "serve-tokens.json"
    good = path.read_text()
    for damage in (good[:40], good.replace('"alice"', '"../alice"'), "[]", good.replace('"n": 16384', '"n": "x"')):
        path.write_text(damage)
        with pytest.raises(SessionError, match="serve-tokens.json: cannot read the raters' tokens"):
            TokenStore.load(web_session)
        assert path.read_text() == damage  # left for the user to look at
    path.write_text(good)
    assert TokenStore.load(web_session).rater_of(token) == "alice"
    assert TokenStore.load(web_session).rater_of(token + "x") is None


def test_scores_for_items_outside_the_raters_view_are_refused(web_session, serve_session):
    base = serve_session(web_session.folder)
    alice, alice_state = _login(base, "alice")
    bob, bob_state = _login(base, "bob")
    assert alice_state["item"] != bob_state["item"]  # ids are per rater
    before = _table_bytes(web_session, "bob"), _table_bytes(web_session, "alice")
    attempts = [
        (alice, {"item": bob_state["item"], "action": "score", "value": 1}),  # bob's id of the same item
        (alice, {"item": "0" * 32, "action": "score", "value": 1}),
        (alice, {"action": "score", "value": 1}),
        (alice, {"item": alice_state["item"], "action": "score", "value": 1, "rater": "bob"}),  # ignored: alice's
    ]
    answers = [client.post(f"{base}/api/action", json=body) for client, body in attempts]
    assert [a.status_code for a in answers] == [409, 409, 409, 200]
    assert _table_bytes(web_session, "bob") == before[0]
    rows = load_rater_table(rater_table_path(web_session, "alice"), web_session).ratings
    assert [(r.rater, r.score) for r in rows] == [("alice", 1)]
    # Alice cannot read bob's volumes by their ids either.
    assert alice.get(base + bob_state["volumes"]["mask"]).status_code == 404
    assert bob.get(base + bob_state["volumes"]["mask"]).status_code == 200


def test_bad_bodies_are_refused_and_the_table_is_intact(web_session, serve_session):
    base = serve_session(web_session.folder)
    client, state = _login(base, "alice")
    good = client.post(f"{base}/api/action", json={"item": state["item"], "action": "score", "value": 4})
    assert good.status_code == 200
    before = _table_bytes(web_session, "alice")
    url, json_type = f"{base}/api/action", {"Content-Type": "application/json"}
    answers = {
        "10 MB comment": client.post(url, json={"item": state["item"], "action": "comment",
                                                "comment": "x" * 10_000_000}),
        "comment over the limit": client.post(url, json={"item": state["item"], "action": "comment",
                                                         "comment": "y" * 10_001}),
        "malformed JSON": client.post(url, data=b'{"item": "', headers=json_type),
        "not UTF-8": client.post(url, data=b'{"item": "\xff\xfe"}', headers=json_type),
        "a list": client.post(url, json=[1, 2]),
        "no JSON type": client.post(url, data=b'{"action": "next"}', headers={"Content-Type": "text/plain"}),
        "score true": client.post(url, json={"item": state["item"], "action": "score", "value": True}),
        "score 7": client.post(url, json={"item": state["item"], "action": "score", "value": 7}),
        "score NaN": client.post(url, data=b'{"item": "%s", "action": "score", "value": NaN}'
                                 % state["item"].encode(), headers=json_type),
        "unknown structure": client.post(url, json={"item": state["item"], "action": "score", "value": 3,
                                                    "structure": "../../etc"}),
        "unknown flag": client.post(url, json={"item": state["item"], "action": "flag", "flag": "x", "checked": True}),
        "unknown action": client.post(url, json={"item": state["item"], "action": "delete"}),
        "bad rater id": client.post(f"{base}/api/login", json={"rater": "../alice"}),
        "rater CON": client.post(f"{base}/api/login", json={"rater": "CON"}),
    }
    for what, answer in answers.items():
        assert answer.status_code in (400, 413), (what, answer.status_code)
        body = answer.json()
        assert body["error"], what
        assert set(body) == set(state), what  # the same shape, whatever went wrong
    assert answers["10 MB comment"].status_code == 413
    assert _table_bytes(web_session, "alice") == before
    table = load_rater_table(rater_table_path(web_session, "alice"), web_session)
    assert [(r.score, r.comment) for r in table.ratings] == [(4, "")]
    # The server goes on: the next good request is saved.
    state = client.get(f"{base}/api/state").json()
    assert client.post(url, json={"item": state["item"], "action": "comment", "comment": "ok"}).status_code == 200
    assert load_rater_table(rater_table_path(web_session, "alice"), web_session).ratings[-1].comment == "ok"


def test_two_tabs_of_one_rater_scoring_at_once(web_session, serve_session):
    """Two logins of one rater (two tabs, two browsers) act at once: each action applies to one item or is refused."""
    base = serve_session(web_session.folder)
    tabs = [_login(base, "alice") for _ in range(2)]
    assert tabs[0][1]["item"] == tabs[1][1]["item"]
    # Tab 1 moves on; tab 2 still shows the first item: its score is refused, not given to the second item.
    tab1, state1 = tabs[0]
    state1 = tab1.post(f"{base}/api/action", json={"item": state1["item"], "action": "score", "value": 5}).json()
    state1 = tab1.post(f"{base}/api/action", json={"item": state1["item"], "action": "next"}).json()
    tab2, state2 = tabs[1]
    stale = tab2.post(f"{base}/api/action", json={"item": state2["item"], "action": "score", "value": 1})
    assert stale.status_code == 409 and stale.json()["item"] == state1["item"]
    assert "another tab" in stale.json()["error"]

    # Both tabs hammer the server at once, each on what it last saw.
    statuses, errors = [], []

    def hammer(client, seen, value):
        try:
            for _ in range(15):
                answer = client.post(f"{base}/api/action",
                                     json={"item": seen["item"], "action": "score", "value": value})
                statuses.append(answer.status_code)
                seen = answer.json()
                answer = client.post(f"{base}/api/action", json={"item": seen["item"], "action": "next"})
                statuses.append(answer.status_code)
                seen = answer.json()
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(tab, tab.get(f"{base}/api/state").json(), value))
               for (tab, _), value in zip(tabs, (2, 3))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(statuses) == 60 and set(statuses) <= {200, 409}
    # The table loads cleanly: one rater, revisions counting up per item, every score on the scale.
    table = load_rater_table(rater_table_path(web_session, "alice"), web_session)
    revisions = {}
    for rating in table.ratings:
        assert rating.rater == "alice" and rating.score in (1, 2, 3, 4, 5, None)
        assert rating.revision == revisions.get(rating.key, 0) + 1
        revisions[rating.key] = rating.revision
    assert table.torn_tail == b""


def test_a_page_on_another_site_cannot_use_the_local_server(web_session, serve_session):
    """DNS rebinding: a request naming another host is refused on 127.0.0.1; cross-site POSTs carry no cookie."""
    base = serve_session(web_session.folder)
    assert _raw_get(base, "/api/state", {"Host": "evil.example:80"})[0] == 403
    assert _raw_get(base, "/", {"Host": "evil.example"})[0] == 403
    client, state = _login(base, "alice")
    cookie = next(iter(client.cookies))
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "Lax"
    # No form of another site can post JSON: a form's body is refused, cookie or not.
    form = client.post(f"{base}/api/action", data={"item": state["item"], "action": "score", "value": "1"})
    assert form.status_code == 400 and not rater_table_path(web_session, "alice").exists()


def test_a_busy_port_is_a_clear_error(web_session):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "LesionQCLib.cli", "serve", str(web_session.folder),
                                 "--port", str(port)], capture_output=True, text=True, timeout=120,
                                env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.returncode == 1
    assert result.stderr.startswith(f"lesionqc: error: cannot listen on 127.0.0.1:{port}"), result.stderr
    assert "Traceback" not in result.stderr
