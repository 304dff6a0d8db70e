"""``spinalcordseg models`` (cli_models) with the shipped catalogue and local files.

Installing from the network through the command line is in test_download.py.
"""

import shutil
from pathlib import Path

import pytest

from SpinalCordSegLib import cli
from SpinalCordSegLib.models.model_folder import sha256_of_file
from SpinalCordSegLib.paths import models_dir


@pytest.fixture
def release(tiny_model, tmp_path) -> Path:
    shutil.copytree(tiny_model.parent, tmp_path / "tree" / tiny_model.parent.name)
    return Path(shutil.make_archive(str(tmp_path / "research-model"), "zip", root_dir=tmp_path / "tree"))


def _run(capsys, *argv):
    code = cli.main(["models", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_the_catalogue_and_installed_models(capsys, release):
    code, out, _ = _run(capsys, "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["ID", "NAME", "SIZE", "TRUST", "SOURCE"]
    line = next(line for line in out.splitlines() if line.startswith("spinalcord "))
    assert "Spinal cord (any contrast)" in line and "not installed: catalogue v4.0" in line
    assert "asked on first use" in line and "size unknown" in line
    demo = next(line for line in out.splitlines() if line.startswith("demo-sc "))
    assert "MiB" in demo and "builtin" in demo and demo.endswith("built-in")
    assert "SCI lesion + cord (T2w)" in out and f"Models folder: {models_dir()}" in out

    assert _run(capsys, "install", "--from", str(release))[0] == 0
    code, out, _ = _run(capsys, "list")
    line = next(line for line in out.splitlines() if line.startswith("research-model"))
    size = sum(f.stat().st_size for f in (models_dir() / "research-model").rglob("*") if f.is_file())
    assert "KiB" in line and f"{size / 1024:.1f} KiB" in line
    assert "not trusted" in line and f"zip: {release.resolve()}" in line


def test_install_trust_info_remove(capsys, release):
    code, out, _ = _run(capsys, "install", "mine", "--from", str(release), "--trust")
    assert code == 0 and "mine: " in out and "mine: trusted (user)" in out
    code, out, _ = _run(capsys, "info", "mine")
    checkpoint = next((models_dir() / "mine").rglob("checkpoint_final.pth"))
    assert code == 0 and "trust: user" in out and f"source: zip: {release.resolve()}" in out
    assert f"sha256 fold_0/checkpoint_final.pth: {sha256_of_file(checkpoint)}" in out
    assert f"sha256 plans.json: {sha256_of_file(checkpoint.parent.parent / 'plans.json')}" in out
    code, out, _ = _run(capsys, "remove", "mine")
    assert code == 0 and "mine: removed" in out and not (models_dir() / "mine").exists()


def test_catalogue_model_from_a_downloaded_file_offline(capsys, release):
    code, out, _ = _run(capsys, "install", "spinalcord", "--from", str(release), "--offline")
    assert code == 0 and "catalogue v4.0" in out and "not trusted yet" in out
    code, out, _ = _run(capsys, "list")
    line = next(line for line in out.splitlines() if line.startswith("spinalcord "))
    assert "catalogue v4.0" in line and "not trusted" in line


def test_models_dir_option(capsys, release, tmp_path):
    elsewhere = tmp_path / "shared-models"
    assert _run(capsys, "install", "--from", str(release), "--models-dir", str(elsewhere))[0] == 0
    assert (elsewhere / "research-model").is_dir() and not models_dir().exists()
    code, out, _ = _run(capsys, "list", "--models-dir", str(elsewhere))
    assert "research-model" in out and f"Models folder: {elsewhere}" in out


def test_info_of_a_catalogue_model(capsys):
    code, out, _ = _run(capsys, "info", "lesion_ms")
    assert code == 0
    assert "cropped input: yes, crop with 'spinalcord'" in out and "folds: 0, 1, 2, 3, 4" in out
    assert out.count("sha256: unknown") == 5 and "/r20260703/model_fold4.zip" in out
    assert "doi:10.1177/13524585261427333" in out and "installed: no" in out


@pytest.mark.parametrize("argv, problem", [
    (["install", "nope"], "'nope' is not a catalogue id"),
    (["install"], "give a catalogue id or --from"),
    (["install", "spinalcord", "--offline"], "offline mode is on"),
    (["info", "nope"], "unknown model 'nope'"),
    (["remove", "nope"], "no installed model 'nope'"),
    (["remove", "../x"], "invalid model id"),
])
def test_errors_are_reported_with_exit_code_1(capsys, argv, problem):
    code, _, err = _run(capsys, *argv)
    assert code == 1 and problem in err and err.startswith("spinalcordseg: error:")


def test_several_files_for_a_custom_model_are_refused(capsys, release):
    code, _, err = _run(capsys, "install", "x", "--from", str(release), str(release))
    assert code == 1 and "--from takes one zip or folder" in err


def test_an_action_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["models"])
    assert exit_info.value.code == 2


def test_list_and_info_show_the_real_trust_state_and_which_file_changed(capsys, release):
    """After a trusted model's checkpoint bytes change, neither command may still say 'user' or the old sha256."""
    assert _run(capsys, "install", "mine", "--from", str(release), "--trust")[0] == 0
    checkpoint = next((models_dir() / "mine").rglob("checkpoint_final.pth"))
    old = sha256_of_file(checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes() + b"appended")
    new = sha256_of_file(checkpoint)
    code, out, _ = _run(capsys, "list")
    line = next(line for line in out.splitlines() if line.startswith("mine "))
    assert code == 0 and "not trusted: fold_0/checkpoint_final.pth changed since you trusted it" in line
    assert f"mine: not trusted: fold_0/checkpoint_final.pth changed (sha256 {old} is now {new}) since you trusted it" \
        in out
    code, out, _ = _run(capsys, "info", "mine")
    assert code == 0 and "trust: user" not in out
    assert f"sha256 fold_0/checkpoint_final.pth: {new} (CHANGED)" in out
    assert f"trust: not trusted: fold_0/checkpoint_final.pth changed (sha256 {old} is now {new})" in out
    # Using it is refused, and the refusal says which file changed.
    from SpinalCordSegLib.errors import UntrustedModelError
    from SpinalCordSegLib.models.model_store import resolve_model

    with pytest.raises(UntrustedModelError) as error:
        resolve_model("mine")
    assert f"fold_0/checkpoint_final.pth changed (sha256 {old} is now {new})" in str(error.value)


def test_list_shows_a_model_whose_plans_fail_the_checks_as_unusable(capsys, release):
    import json

    assert _run(capsys, "install", "mine", "--from", str(release))[0] == 0
    plans_path = next((models_dir() / "mine").rglob("plans.json"))
    plans = json.loads(plans_path.read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "os.system"
    plans_path.write_text(json.dumps(plans))
    code, out, _ = _run(capsys, "list")
    line = next(line for line in out.splitlines() if line.startswith("mine "))
    assert code == 0 and "unusable" in line
    assert f"mine: unusable: {plans_path}: 'configurations.3d_fullres.architecture.network_class_name' = 'os.system'" \
        in out
