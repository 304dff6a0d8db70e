"""LesionQC fixtures. Those of the ``lesionqc serve`` tests: a real session and the real server on 127.0.0.1.

The session is built from SCT's T2w test scan: its manual cord mask and an eroded
copy (a second source), three cases of two anonymous items each, the key kept
outside the session folder. The server is the command's own: Flask under waitress,
on a free port of 127.0.0.1, in a thread of the test process.
"""

import threading

import pytest
import SimpleITK as sitk

SOURCES = ("manualRef", "modelOut")


def _web_session(tmp_path, scan, cord):
    from LesionQCLib.session import make_session

    model = tmp_path / f"{SOURCES[1]}.nii.gz"
    sitk.WriteImage(sitk.BinaryErode(sitk.ReadImage(str(cord)), [1, 1, 1]), str(model))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"case_id,image,seg:{SOURCES[0]},seg:{SOURCES[1]}\n" + "".join(
        f"sub-0{i},{scan},{cord},{model}\n" for i in range(1, 4)))
    return make_session(manifest, tmp_path / "session", seed=5, key_path=tmp_path / "private" / "key.json")


@pytest.fixture
def web_session(tmp_path, sample_data):
    """A three-case session of the bundled sample scan and its cord mask (two sources)."""
    return _web_session(tmp_path, sample_data.scan, sample_data.cord)


@pytest.fixture
def shared_web_session(tmp_path, shared_data):
    """The same session on SCT's larger t2 scan, whose intensities a window/level drag can narrow."""
    folder = shared_data / "sct_testing_data/t2"
    return _web_session(tmp_path, folder / "t2.nii.gz", folder / "t2_seg-manual.nii.gz")


def _run(server, stopped):
    try:
        server.run()
    except OSError:
        # Closing waitress from another thread ends its select() with EBADF (as in WebTest's
        # StopableWSGIServer); only an error before the stop is one.
        if not stopped.is_set():
            raise


@pytest.fixture
def serve_session():
    """``serve_session(folder, tokens=None)`` starts the server and returns its base URL (stopped after)."""
    import waitress

    from LesionQCLib.web import Review, create_app
    from LesionQCLib.session import SessionView

    servers = []
    stopped = threading.Event()

    def start(folder, tokens=None):
        review = Review(SessionView.load(folder), tokens)
        server = waitress.create_server(create_app(folder, tokens, review), host="127.0.0.1", port=0, threads=4)
        thread = threading.Thread(target=_run, args=(server, stopped), daemon=True)
        thread.start()
        servers.append((server, thread, review))
        return f"http://127.0.0.1:{server.effective_port}"

    yield start
    stopped.set()
    for server, thread, review in servers:
        server.close()
        thread.join(timeout=10)
        review.close()

