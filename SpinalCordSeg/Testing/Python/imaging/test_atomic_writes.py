"""Atomic writes on real files: a full disk, the umask, and what killed writers leave behind.

The full-disk test mounts a small tmpfs in a private mount namespace (``unshare``),
so nothing outside the test sees it; it skips, with the reason, where the machine
does not allow that. Killed writers are real processes stopped with a real SIGKILL.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SpinalCordSegLib.rounds.cohort import run_batch
from SpinalCordSegLib.errors import FileWriteError
from SpinalCordSegLib.imaging.fileutil import STALE_AGE_S, owner_tag, write_atomic, write_json_atomic, write_text_atomic
from SpinalCordSegLib.imaging.image_io import write_image_atomic
from SpinalCordSegLib.models.model_store import RECORD_FILE, ModelStore
from SpinalCordSegLib.imaging.outputs import write_outputs
from SpinalCordSegLib.paths import models_dir
from SpinalCordSegLib.rounds.worklist import Worklist

LIBS = os.pathsep.join(str(Path(__file__).resolve().parents[4] / lib) for lib in ("SpinalCordSeg", "LesionQC"))


def _noise(shape=(40, 64, 64)) -> sitk.Image:
    """Random floats: gzip cannot shrink them, so the file is about as large as the voxels."""
    return sitk.GetImageFromArray(np.random.default_rng(0).random(shape).astype(np.float32))


def _start(script: str, *args: str) -> subprocess.Popen:
    """A real Python process running ``script`` with the Libs of this checkout."""
    env = dict(os.environ, PYTHONPATH=LIBS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], env=env)


def _wait_for(pattern: str, folder: Path, process: subprocess.Popen, timeout: float = 120.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.002)
    process.kill()
    pytest.fail(f"no {pattern} appeared in {folder} (process exit code {process.poll()})")


FULL_DISK_SCRIPT = """
    import json, sys
    from pathlib import Path
    import numpy as np, SimpleITK as sitk
    from SpinalCordSegLib.errors import FileWriteError
    from SpinalCordSegLib.imaging.fileutil import write_text_atomic
    from SpinalCordSegLib.imaging.image_io import write_image_atomic

    disk = Path(sys.argv[1])
    small = sitk.GetImageFromArray(np.ones((8, 8, 8), np.uint8))
    noise = sitk.GetImageFromArray(np.random.default_rng(0).random((40, 64, 64)).astype(np.float32))
    attempts = {
        "small.nii.gz": lambda path: write_image_atomic(small, path),
        "noise.nii.gz": lambda path: write_image_atomic(noise, path),
        "noise.nii": lambda path: write_image_atomic(noise, path),
        "table.csv": lambda path: write_text_atomic("x" * 700_000, path),
    }
    results = {}
    for name, attempt in attempts.items():
        try:
            attempt(disk / name)
            results[name] = "written"
        except FileWriteError as error:
            results[name] = str(error)
    print(json.dumps({"results": results, "files": sorted(p.name for p in disk.iterdir())}))
"""


def test_a_full_disk_leaves_no_file_under_its_name(tmp_path):
    """655 kB on a 512 kB tmpfs: SimpleITK reports nothing for .nii.gz; the check must."""
    if shutil.which("unshare") is None:
        pytest.skip("no 'unshare' on this machine to mount a private tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(textwrap.dedent(FULL_DISK_SCRIPT))
    command = f"mount -t tmpfs -o size=512k tmpfs {disk} && exec {sys.executable} {script} {disk}"
    env = dict(os.environ, PYTHONPATH=LIBS)
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", command],
                         capture_output=True, text=True, env=env, timeout=300)
    if run.returncode != 0 and "mount" in run.stderr and "{" not in run.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    results = report["results"]
    assert results["small.nii.gz"] == "written"
    for name in ("noise.nii.gz", "noise.nii", "table.csv"):
        assert results[name].startswith(str(disk / name)) and "disk full" in results[name], results[name]
    assert "incomplete" in results["noise.nii.gz"]  # found by the gzip check, not by SimpleITK
    assert report["files"] == ["small.nii.gz"]  # no truncated file, no temporary left


def test_a_failed_write_removes_its_temporary_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "worklist.csv"
    write_text_atomic("old\n", target)

    def short_write(temporary: Path) -> None:
        temporary.write_text("half")

    def check_length(temporary: Path) -> None:
        if temporary.stat().st_size != len("complete"):
            raise ValueError("short")

    with pytest.raises(FileWriteError, match="worklist.csv: cannot write file: the written file is incomplete"):
        write_atomic(target, short_write, check_length)
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["worklist.csv"]
    with pytest.raises(FileExistsError):
        write_text_atomic("new\n", target, replace=False)
    assert target.read_text() == "old\n" and len(list(tmp_path.iterdir())) == 1
    png = bytes(range(256)) * 10
    assert write_text_atomic(png, tmp_path / "plot.png").read_bytes() == png


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_published_files_get_the_umask_mode(tmp_path, tiny_model, umask):
    previous = os.umask(umask)
    try:
        derivatives = tmp_path / "derivatives"
        soft = _noise((8, 8, 8))
        written = write_outputs({"sc": soft}, "sub-01_T2w", derivatives, {"sc": 0.5}, {"Name": "test"})
        worklist = Worklist.load(derivatives / "worklist.csv", create=True)
        files = [
            *written.values(),
            derivatives / "sub-01_T2w_label-SC_seg.json",
            write_image_atomic(soft, tmp_path / "plain.nii"),
            write_json_atomic({"a": 1}, tmp_path / "a.json"),
            worklist.save(),
            ModelStore().install_from(tiny_model, "shared").path / RECORD_FILE,
        ]
    finally:
        os.umask(previous)
    modes = {str(path): oct(path.stat().st_mode & 0o777) for path in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


KILLED_WRITER = """
    import sys
    import numpy as np, SimpleITK as sitk
    from SpinalCordSegLib.imaging.image_io import write_image_atomic

    image = sitk.GetImageFromArray(np.random.default_rng(1).random((200, 256, 256)).astype(np.float32))
    while True:
        write_image_atomic(image, sys.argv[1])
"""


def test_temporaries_of_killed_writers_are_removed_on_the_next_run(tmp_path, caplog):
    derivatives = tmp_path / "derivatives"
    anat = derivatives / "sub-01" / "anat"
    anat.mkdir(parents=True)
    killed = _start(KILLED_WRITER, str(anat / "killed_probseg.nii.gz"))
    orphan = _wait_for(".killed_probseg.nii.gz.*.part.nii.gz", anat, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    live = _start(KILLED_WRITER, str(anat / "live_probseg.nii.gz"))
    try:
        in_progress = _wait_for(".live_probseg.nii.gz.*.part.nii.gz", anat, live)
        live.send_signal(signal.SIGSTOP)  # alive, in the middle of a write
        # Another host's writer cannot be asked: fresh means maybe live, a day old means dead.
        other_host_fresh = anat / ".x_seg.nii.gz.scs-4242@another-node.abcd1234.part.nii.gz"
        other_host_old = anat / ".y_seg.nii.gz.scs-4242@another-node.abcd1234.part.nii.gz"
        no_owner = derivatives / ".worklist.csv.k2j4_x9q.tmp"  # could be the user's: never removed
        not_ours = anat / ".notes.txt"
        for path in (other_host_fresh, other_host_old, no_owner, not_ours):
            path.write_bytes(b"partial")
        for path in (other_host_old, no_owner):
            os.utime(path, (time.time() - STALE_AGE_S - 60,) * 2)
        assert orphan.is_file()

        with caplog.at_level(logging.WARNING):
            report = run_batch([], None, derivatives, {})  # the next run, here with nothing to predict
        assert report.predicted == [] and report.failed == {}
        assert not orphan.exists() and not other_host_old.exists()
        assert in_progress.is_file() and other_host_fresh.is_file() and not_ours.is_file() and no_owner.is_file()
        logged = caplog.text
        assert f"removed {orphan} (" in logged and "left by an interrupted write" in logged
        assert str(in_progress) not in logged
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()


KILLED_INSTALL = """
    import sys
    from SpinalCordSegLib.models.model_store import ModelStore

    ModelStore().install_from(sys.argv[1], sys.argv[2])
"""


def test_staging_folders_of_killed_installs_are_removed_on_the_next_install(tiny_model, tmp_path, caplog):
    big = tmp_path / "big" / tiny_model.name
    shutil.copytree(tiny_model, big)
    with open(big / "fold_0" / "padding.bin", "wb") as stream:
        stream.write(os.urandom(256 << 20))  # copying it takes long enough to be caught
    store = models_dir()
    killed = _start(KILLED_INSTALL, str(big), "killed")
    killed_staging = _wait_for(".install-killed.*", store, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed_staging.is_dir() and not (store / "killed").exists()
    live = _start(KILLED_INSTALL, str(big), "live")  # the next run: it clears the killed one's folder first
    try:
        live_staging = _wait_for(".install-live.*", store, live)
        live.send_signal(signal.SIGSTOP)  # alive, in the middle of its install
        assert not killed_staging.exists()
        with caplog.at_level(logging.WARNING):
            ModelStore().install_from(tiny_model, "next")
        assert live_staging.is_dir() and str(live_staging) not in caplog.text
        assert sorted(m.id for m in ModelStore().installed()) == ["next"]
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    with caplog.at_level(logging.WARNING):
        ModelStore().remove("next")  # the next run after the second kill
    assert f"removed {live_staging} (" in caplog.text and "left by an interrupted install" in caplog.text
    assert not [p for p in store.iterdir() if p.name.startswith(".")]


def test_a_killed_reinstall_gives_the_previous_model_back(tiny_model, tmp_path):
    """Killed between moving the installed model aside and moving the new one in."""
    store = ModelStore()
    store.install_from(tiny_model, "mine")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    staging = models_dir() / f".install-mine.{owner_tag(int(dead.stdout))}.ab12cd34"
    staging.mkdir()
    os.rename(models_dir() / "mine", staging / "previous")
    store.remove_stale_staging()
    assert not staging.exists() and [m.id for m in store.installed()] == ["mine"]


def test_staged_folders_renamed_into_place_get_the_umask_mode(tmp_path, sample_data):
    """A LesionQC session is built in a staging folder, then renamed: raters must be able to read it."""
    from LesionQCLib.session import make_session

    manifest = tmp_path / "manifest.csv"
    scan, cord = sample_data.scan, sample_data.cord
    rows = [f"sub-0{i},{scan},{cord},{cord}" for i in (1, 2)]
    manifest.write_text("\n".join(["case_id,image,seg:manual,seg:model", *rows]) + "\n")
    previous = os.umask(0o022)
    try:
        make_session(manifest, tmp_path / "session", seed=1)
    finally:
        os.umask(previous)
    folders = [tmp_path / "session", *[p for p in (tmp_path / "session").rglob("*") if p.is_dir()]]
    assert {oct(p.stat().st_mode & 0o777) for p in folders} == {"0o755"}
