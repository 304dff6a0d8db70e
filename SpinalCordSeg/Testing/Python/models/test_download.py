"""Downloads and catalogue installs over HTTP (SpinalCordSegLib.models.download, model_store).

Every test talks to a real ``http.server`` on 127.0.0.1 that serves zips the
tests build from a generated nnU-Net model. The server honours ``Range``
requests (for resume) and can answer 404, ignore ``Range``, or drop the
connection half-way through a file, once or every time.
"""

import hashlib
import io
import json
import random
import re
import resource
import signal
import socket
import threading
import zipfile
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from SpinalCordSegLib import cli
from SpinalCordSegLib.models.catalogue import CATALOGUE_ENV
from SpinalCordSegLib.models.download import download, partial_path
from SpinalCordSegLib.errors import ModelFolderError, ModelInstallError
from SpinalCordSegLib.models.model_store import ModelStore, resolve_model
from SpinalCordSegLib.paths import cache_dir, models_dir
from SpinalCordSegLib.resources import resources_dir


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        state = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        fault = state.faults.get(self.path)
        if fault == "404" or self.path not in state.files:
            self.send_error(404)
            return
        data = state.files[self.path]
        start = 0
        requested = self.headers.get("Range")
        if requested and fault != "ignore-range":
            start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "drop" or (fault == "drop-once" and self.path not in state.dropped):
            state.dropped.add(self.path)
            self.wfile.write(body[: len(body) // 2])  # then the connection closes: a dropped download
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class ModelServer:
    """Files by URL path, faults by URL path, and the log of (path, Range header) requests."""

    def __init__(self):
        self.files, self.faults, self.requests, self.dropped = {}, {}, [], set()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.state = self
        threading.Thread(target=self._http.serve_forever, args=(0.02,), daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._http.server_port}{path}"

    def close(self):
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture
def server():
    started = ModelServer()
    yield started
    started.close()


@pytest.fixture
def closed_port_url():
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/model.zip"


def _zip_bytes(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zip_file:
        for name, data in members.items():
            zip_file.writestr(name, data)
    return buffer.getvalue()


def _model_members(model: Path, prefix: str = "Dataset900_SyntheticCord", folds=("0",)) -> dict:
    """The files of a release zip: <prefix>/<results folder>/..., fold_0's checkpoint as each fold."""
    base = f"{prefix}/{model.name}"
    members = {f"{base}/{name}": (model / name).read_bytes() for name in ("dataset.json", "plans.json")}
    checkpoint = (model / "fold_0" / "checkpoint_final.pth").read_bytes()
    members.update({f"{base}/fold_{fold}/checkpoint_final.pth": checkpoint for fold in folds})
    return members


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _listing(folder: Path) -> list:
    """Every path below ``folder`` with its size: what 'the cache is as it was' compares."""
    if not folder.exists():
        return []
    return sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*"))


@contextmanager
def _file_size_limit(limit: int):
    """Make writes past ``limit`` bytes fail with EFBIG (RLIMIT_FSIZE): a real write failure, no root needed."""
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel's signal kills pytest
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)


@pytest.fixture
def catalogue(tmp_path, monkeypatch, server):
    """Point the shipped catalogue's asset URLs at the test server (same file names); return a writer.

    ``catalogue(sha256={file name: hex})`` pins assets; the catalogue is
    selected through SPINALCORDSEG_CATALOGUE, as a site catalogue would be.
    """
    shipped = json.loads((resources_dir() / "models.json").read_text())

    def write(sha256=None, mirrors=None):
        data = json.loads(json.dumps(shipped))
        for entry in data["models"]:
            for asset in entry.get("assets", []):
                asset["urls"] = list((mirrors or {}).get(asset["name"], [])) + [server.url("/" + asset["name"])]
                asset["sha256"] = (sha256 or {}).get(asset["name"])
        path = tmp_path / "catalogue" / "models.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(data))
        monkeypatch.setenv(CATALOGUE_ENV, str(path))
        return path

    write()
    return write


CORD_ZIP = "/model_contrast_agnostic_20260628.zip"


# -- the downloader ---------------------------------------------------------------------------------


def test_download_returns_the_verified_file(server):
    data = bytes(range(256)) * 400
    server.files["/a.zip"] = data
    seen = []
    result = download([server.url("/a.zip")], sha256=_sha256(data), size=len(data),
                      progress=lambda done, total: seen.append((done, total)))
    assert result.path.read_bytes() == data and result.sha256 == _sha256(data)
    assert result.url == server.url("/a.zip") and result.path.parent == cache_dir() / "downloads"
    assert seen[-1] == (len(data), len(data))


def test_mirrors_are_tried_in_turn(server, closed_port_url):
    server.files["/good.zip"] = b"payload" * 100
    result = download([closed_port_url, server.url("/missing.zip"), server.url("/good.zip")])
    assert result.url == server.url("/good.zip")
    assert [path for path, _ in server.requests] == ["/missing.zip", "/good.zip"]


def test_every_mirror_failing_names_each_url_and_problem(server, closed_port_url):
    with pytest.raises(ModelInstallError) as error:
        download([closed_port_url, server.url("/missing.zip")])
    message = str(error.value)
    assert f"{closed_port_url}: cannot connect" in message
    assert f"{server.url('/missing.zip')}: HTTP error 404" in message


def test_dropped_connection_resumes_with_a_range_request(server):
    data = bytes(range(256)) * 4000
    server.files["/a.zip"] = data
    server.faults["/a.zip"] = "drop-once"
    result = download([server.url("/a.zip")], sha256=_sha256(data))
    assert result.path.read_bytes() == data
    (first, no_range), (second, resumed_from) = server.requests
    assert first == second == "/a.zip" and no_range is None
    offset = int(re.fullmatch(r"bytes=(\d+)-", resumed_from).group(1))
    assert 0 < offset < len(data)


def test_partial_download_is_kept_and_resumed_by_a_later_call(server):
    data = bytes(range(256)) * 4000
    server.files["/a.zip"] = data
    server.faults["/a.zip"] = "drop"
    with pytest.raises(ModelInstallError, match="connection .* to resume next time") as error:
        download([server.url("/a.zip")])
    assert server.url("/a.zip") in str(error.value)
    kept = partial_path(server.url("/a.zip")).stat().st_size
    assert 0 < kept < len(data)
    del server.faults["/a.zip"]
    server.requests.clear()
    assert download([server.url("/a.zip")], sha256=_sha256(data)).path.read_bytes() == data
    assert server.requests == [("/a.zip", f"bytes={kept}-")]


def test_complete_file_in_the_cache_is_not_downloaded_again(server):
    data = b"z" * 5000
    server.files["/a.zip"] = data
    download([server.url("/a.zip")])
    server.requests.clear()
    assert download([server.url("/a.zip")], sha256=_sha256(data)).path.read_bytes() == data
    assert server.requests == [("/a.zip", "bytes=5000-")]  # answered 416: nothing left to send


def test_server_ignoring_range_restarts_from_the_beginning(server):
    data = b"0123456789" * 1000
    server.files["/a.zip"] = data
    server.faults["/a.zip"] = "ignore-range"
    stale = partial_path(server.url("/a.zip"))
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"garbage")
    assert download([server.url("/a.zip")], sha256=_sha256(data)).path.read_bytes() == data


@pytest.mark.parametrize("expected, problem", [({"sha256": "0" * 64}, "sha256"), ({"size": 3}, "size")])
def test_wrong_file_is_deleted_and_named(server, expected, problem):
    server.files["/a.zip"] = b"not the release" * 10
    with pytest.raises(ModelInstallError) as error:
        download([server.url("/a.zip")], **expected)
    message = str(error.value)
    assert server.url("/a.zip") in message and f"{problem}" in message and "does not match" in message
    assert not partial_path(server.url("/a.zip")).exists()


def test_write_failure_during_download_is_reported_and_cleaned(server):
    server.files["/a.zip"] = bytes(300_000)
    with _file_size_limit(100_000), pytest.raises(ModelInstallError, match="cannot write .*File too large"):
        download([server.url("/a.zip")])
    assert not partial_path(server.url("/a.zip")).exists()


# -- catalogue installs over HTTP -------------------------------------------------------------------


def test_catalogue_model_installs_on_first_use_and_is_pinned(server, catalogue, tiny_model):
    data = _zip_bytes(_model_members(tiny_model))
    server.files[CORD_ZIP] = data
    catalogue(sha256={CORD_ZIP[1:]: _sha256(data)})
    questions = []
    resolved = resolve_model("spinalcord", confirm=lambda q: questions.append(q) or True)
    assert len(questions) == 1 and server.url(CORD_ZIP) in questions[0] and "not installed" in questions[0]
    assert resolved.folder == models_dir() / "spinalcord" / "Dataset900_SyntheticCord" / tiny_model.name
    assert (resolved.model_id, resolved.version, resolved.trusted_because) == ("spinalcord", "v4.0", "pinned")
    assert (resolved.orientation, resolved.crop_with) == ("RAS", None)
    record = json.loads((models_dir() / "spinalcord" / "spinalcordseg-model.json").read_text())
    assert record["urls"] == [server.url(CORD_ZIP)] and record["archive_sha256"] == {CORD_ZIP[1:]: _sha256(data)}
    assert record["files_sha256"] == resolved.files_sha256
    assert resolved.sha256 == {"0": resolved.files_sha256["fold_0/checkpoint_final.pth"]}
    assert not list((cache_dir() / "downloads").iterdir())  # the zip is deleted once installed
    # Second use: nothing downloaded, nothing asked.
    server.requests.clear()
    assert resolve_model("spinalcord").folder == resolved.folder and server.requests == []


def test_per_fold_release_files_are_merged_into_one_model(server, catalogue, tiny_model):
    for fold in range(5):
        members = _model_members(tiny_model, "Dataset101_MSLesion", folds=(str(fold),))
        server.files[f"/model_fold{fold}.zip"] = _zip_bytes(members)
    answers = []
    resolved = resolve_model("lesion_ms", confirm=lambda q: answers.append(q) or True)
    assert "and 4 more file(s)" in answers[0] and "not trusted yet" in answers[1]  # install, then trust
    assert "readable with torch.load(weights_only=True)" in answers[1]
    assert sorted(p.name for p in resolved.folder.glob("fold_*")) == [f"fold_{i}" for i in range(5)]
    assert resolved.trusted_because == "user" and resolved.crop_with == "spinalcord"
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(device=__import__("torch").device("cpu"), verbose=False)
    predictor.initialize_from_trained_model_folder(str(resolved.folder), use_folds=(0, 1, 2, 3, 4))
    assert len(predictor.list_of_parameters) == 5


def _bad_release(kind: str, server: ModelServer, model: Path, catalogue) -> str:
    """Set up one failure of the 'spinalcord' install; return what the error must name."""
    good = _zip_bytes(_model_members(model))
    if kind == "404":
        server.faults[CORD_ZIP] = "404"
        return "HTTP error 404"
    if kind == "unreachable":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{probe.getsockname()[1]}{CORD_ZIP}"
        catalogue(mirrors={CORD_ZIP[1:]: [dead]})
        server.faults[CORD_ZIP] = "404"
        return f"{dead}: cannot connect"
    server.files[CORD_ZIP] = good
    if kind == "truncated":
        server.faults[CORD_ZIP] = "drop"
        return "connection"
    if kind == "checksum":
        catalogue(sha256={CORD_ZIP[1:]: "0" * 64})
        return "does not match"
    if kind == "no-nnunet-folder":
        server.files[CORD_ZIP] = _zip_bytes({"release/README.txt": b"weights are elsewhere"})
        return "no nnU-Net results folder"
    if kind == "two-folders":
        both = {**_model_members(model, "Dataset900_A"), **_model_members(model, "Dataset901_B")}
        server.files[CORD_ZIP] = _zip_bytes(both)
        return "several nnU-Net results folders"
    if kind == "zip-slip":
        server.files[CORD_ZIP] = _zip_bytes({**_model_members(model), "../../evil.py": b"import os"})
        return "outside the archive"
    assert kind == "disk-full"
    # Incompressible padding (a zip bomb's zeros are refused by the ratio limit): extraction passes the write limit.
    padding = random.Random(0).randbytes(2_000_000)
    server.files[CORD_ZIP] = _zip_bytes({**_model_members(model), "padding.bin": padding})
    return "File too large"


@pytest.mark.parametrize("kind", ["404", "unreachable", "truncated", "checksum", "no-nnunet-folder",
                                  "two-folders", "zip-slip", "disk-full"])
def test_failed_install_leaves_the_models_folder_as_it_was(server, catalogue, tiny_model, tmp_path, kind):
    store = ModelStore()
    keep = tmp_path / "keep.zip"
    keep.write_bytes(_zip_bytes(_model_members(tiny_model)))
    store.install_from(keep, "keep-me")  # something already installed must stay untouched
    before = _listing(models_dir())
    must_name = _bad_release(kind, server, tiny_model, catalogue)
    store = ModelStore()  # re-read the catalogue the failure may have changed
    if kind == "disk-full":
        with _file_size_limit(1_000_000), pytest.raises(ModelInstallError) as error:
            store.install("spinalcord")
    else:
        with pytest.raises((ModelInstallError, ModelFolderError)) as error:
            store.install("spinalcord")
    assert must_name in str(error.value)
    assert CORD_ZIP[1:] in str(error.value)  # the URL or the downloaded file is named
    assert _listing(models_dir()) == before
    assert store.get_installed("spinalcord") is None


def test_offline_mode_never_touches_the_network(server, catalogue, tiny_model, monkeypatch):
    server.files[CORD_ZIP] = _zip_bytes(_model_members(tiny_model))
    monkeypatch.setenv("SPINALCORDSEG_OFFLINE", "1")
    with pytest.raises(ModelInstallError, match="offline mode is on") as error:
        resolve_model("spinalcord", confirm=lambda q: True)
    assert "spinalcordseg models install spinalcord --from" in str(error.value)
    with pytest.raises(ModelInstallError, match="offline mode is on"):
        ModelStore().install("spinalcord")
    assert server.requests == [] and _listing(models_dir()) == []


def test_cli_install_downloads_the_model(server, catalogue, tiny_model, capsys):
    server.files[CORD_ZIP] = _zip_bytes(_model_members(tiny_model))
    assert cli.main(["models", "install", "spinalcord", "--trust"]) == 0
    out = capsys.readouterr().out
    assert f"catalogue v4.0: {server.url(CORD_ZIP)}" in out and "spinalcord: trusted (user)" in out
    assert cli.main(["models", "install", "spinalcord"]) == 0
    assert "already installed" in capsys.readouterr().out
    assert [path for path, _ in server.requests] == [CORD_ZIP]


# -- in the background (the Slicer panel's Apply) -------------------------------------------------------


def _poll_until_done(task, confirm, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while not task.poll(confirm):
        assert time.monotonic() < deadline, task.message
        time.sleep(0.01)
    return task.result


def test_a_first_use_download_runs_in_the_background_and_asks_on_the_polling_thread(server, catalogue, tiny_model):
    from SpinalCordSegLib.inference.job_runner import BackgroundTask

    data = _zip_bytes(_model_members(tiny_model))
    server.files[CORD_ZIP] = data
    catalogue(sha256={CORD_ZIP[1:]: _sha256(data)})
    asked_on = []
    task = BackgroundTask(lambda ask, progress: resolve_model("spinalcord", confirm=ask, progress=progress))
    resolved = _poll_until_done(task, lambda question: asked_on.append(threading.current_thread()) or True)
    assert asked_on == [threading.main_thread()]  # the download question: a dialog on the GUI thread
    assert task.fraction == 1.0 and task.message.startswith("downloading the model")
    assert resolved.model_id == "spinalcord" and resolved.trusted_because == "pinned"


def test_cancel_stops_a_download_at_its_next_chunk_and_keeps_the_part_for_resuming(server):
    from SpinalCordSegLib.errors import CancelledError
    from SpinalCordSegLib.inference.job_runner import BackgroundTask
    from SpinalCordSegLib.models.download import CHUNK_SIZE

    data = random.Random(3).randbytes(8 * CHUNK_SIZE)
    server.files["/big.zip"] = data
    url = server.url("/big.zip")
    tasks = []
    started = threading.Event()

    def work(ask, progress):
        def on_chunk(done, total):
            progress(done, total)
            tasks[0].cancel()  # the user presses Cancel while the first chunk arrives

        started.wait()
        return download([url], progress=on_chunk)

    tasks.append(BackgroundTask(work))
    task = tasks[0]
    started.set()
    with pytest.raises(CancelledError):
        _poll_until_done(task, lambda question: True)
    assert 0 < partial_path(url).stat().st_size < len(data)
