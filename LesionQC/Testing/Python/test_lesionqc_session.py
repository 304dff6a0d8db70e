"""Scales, manifests and session folders: reproducible, blinded, and safe on bad input.

Cases are the real T2w scan of SCT's test data with its manual cord mask and an
eroded copy of that mask standing for a model's output.
"""

import csv
import gzip
import json

import numpy as np
import pytest
import SimpleITK as sitk

from LesionQCLib.cli import main
from LesionQCLib.errors import KeyMismatchError, ManifestError, ScaleError, ScoreError, SessionError
from LesionQCLib.scales import Scale, default_scale, load_scale
from LesionQCLib.session import SessionView, default_key_path, find_key, load_key, make_session

# Distinctive source names, so that a leak into the rating view cannot hide.
SOURCES = ("manualTruthQ7", "secretModelZ3")


def write_manifest(folder, sample_data, count=6, contrasts=None, name="manifest.csv"):
    """A CSV manifest of ``count`` cases of the bundled T2w sample, two sources each."""
    image = sample_data.scan
    manual = sample_data.cord
    model = folder / "model_output.nii.gz"
    if not model.exists():
        sitk.WriteImage(sitk.BinaryErode(sitk.ReadImage(str(manual)), [1, 1, 1]), str(model))
    contrasts = contrasts or ["T2w"] * count
    path = folder / name
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["case_id", "image", "contrast"] + [f"seg:{s}" for s in SOURCES])
        for index, contrast in enumerate(contrasts):
            writer.writerow([f"sub-{index:02d}", image, contrast, manual, model.name])
    return path


# --------------------------------------------------------------------------- scales


def test_default_scale_has_five_anchored_points_structures_and_flags():
    scale = default_scale()
    assert scale.values == (1, 2, 3, 4, 5)
    assert [p.anchor for p in scale.points] == ["very poor", "poor", "acceptable", "good", "excellent"]
    assert all(p.description for p in scale.points)
    assert scale.required_structure_ids == ("overall",)
    assert set(scale.structure_ids) == {"overall", "cord", "lesion"}
    assert scale.flag("image_unusable").excludes and scale.flag("image_unusable").scope == "case"
    assert not scale.flag("image_artefact").excludes
    assert scale.comment
    assert Scale.from_dict(scale.to_dict()) == scale


@pytest.mark.parametrize("change, problem", [
    ({"points": [{"value": 2, "anchor": "b"}, {"value": 1, "anchor": "a"}]}, "increasing"),
    ({"points": [{"value": 1, "anchor": ""}, {"value": 2, "anchor": "b"}]}, "anchor"),
    ({"structures": [{"id": "overall", "required": False}]}, "required structure"),
    ({"flags": [{"id": "x"}, {"id": "x"}]}, "duplicate flag"),
    ({"id": "Likert 5"}, "'id'"),
])
def test_malformed_scales_are_refused_with_the_file_named(tmp_path, change, problem):
    data = {**default_scale().to_dict(), **change}
    path = tmp_path / "my_scale.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ScaleError, match=problem) as error:
        load_scale(path)
    assert "my_scale.json" in str(error.value)


def test_scores_outside_the_scale_are_refused():
    scale = default_scale()
    assert scale.validate_score("4", "cord") == 4 and scale.validate_score(1, "overall") == 1
    for bad in (0, 6, "4.5", True, None):
        with pytest.raises(ScoreError):
            scale.validate_score(bad, "overall")
    with pytest.raises(ScoreError, match="structure"):
        scale.validate_score(3, "brain")


# --------------------------------------------------------------------------- building


def test_session_is_reproducible_from_its_seed(tmp_path, sample_data):
    manifest = write_manifest(tmp_path, sample_data, count=8)
    first = make_session(manifest, tmp_path / "first", seed=11)
    second = make_session(manifest, tmp_path / "second", seed=11)
    other = make_session(manifest, tmp_path / "other", seed=12)

    # Same sample, order, letters and files; the id is random (it must not depend on the key).
    assert _without_id(tmp_path / "first") == _without_id(tmp_path / "second")
    assert len({first.session_id, second.session_id, other.session_id}) == 3
    key_first = json.loads(default_key_path(tmp_path / "first").read_text())
    key_second = json.loads(default_key_path(tmp_path / "second").read_text())
    assert key_first["cases"] == key_second["cases"] and key_first["seed"] == 11
    plan = [(c, key_first["cases"][c]["items"]) for c in (case.case_id for case in first.cases)]
    key_other = json.loads(default_key_path(tmp_path / "other").read_text())
    assert plan != [(c, key_other["cases"][c]["items"]) for c in (case.case_id for case in other.cases)]
    # The order is a permutation of the manifest, and both letters occur with both sources.
    assert sorted(c.case_id for c in first.cases) == [f"sub-{i:02d}" for i in range(8)]
    assert {items["A"] for _, items in plan} == set(SOURCES)


def _without_id(folder):
    data = json.loads((folder / "session.json").read_text())
    return {k: v for k, v in data.items() if k != "session_id"}


def test_the_rating_view_never_contains_a_source(tmp_path, sample_data):
    manifest = write_manifest(tmp_path, sample_data)
    view = make_session(manifest, tmp_path / "session", seed=3, key_path=tmp_path / "elsewhere" / "key.json")

    files = sorted(p for p in (tmp_path / "session").rglob("*") if p.is_file())
    assert files, "the session folder is empty"
    assert not (tmp_path / "session" / "key.json").exists()
    for path in files:
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            data = gzip.decompress(data)  # NIfTI headers: description fields, intent names
        for source in SOURCES + ("model_output", "seg-manual"):
            assert source.encode() not in data, (path, source)
            assert source not in str(path.relative_to(tmp_path))
    assert not any(source in repr(view) for source in SOURCES)
    # The key, kept elsewhere, holds the sources and matches the view.
    key = load_key(tmp_path / "elsewhere" / "key.json", view)
    assert set(key.sources) == set(SOURCES)


def test_items_are_the_sources_voxels_on_the_image_grid(tmp_path, sample_data):
    manifest = write_manifest(tmp_path, sample_data, count=2)
    view = make_session(manifest, tmp_path / "session", seed=5)
    key = load_key(default_key_path(tmp_path / "session"), view)
    originals = {
        SOURCES[0]: sample_data.cord,
        SOURCES[1]: tmp_path / "model_output.nii.gz",
    }
    image = sitk.ReadImage(str(view.cases[0].image))
    for case in view.cases:
        for item in case.items:
            written = sitk.ReadImage(str(item.path))
            expected = sitk.GetArrayFromImage(sitk.ReadImage(str(originals[key.source(case.case_id, item.item_id)])))
            assert written.GetPixelID() == sitk.sitkUInt8
            assert written.GetSize() == image.GetSize()
            assert np.allclose(written.GetDirection(), image.GetDirection())
            assert np.array_equal(sitk.GetArrayFromImage(written), expected)
    assert view.labels == {1: "segmentation"}


def test_stratified_sampling_keeps_the_proportions(tmp_path, sample_data):
    contrasts = ["T2w"] * 6 + ["T1w"] * 4
    manifest = write_manifest(tmp_path, sample_data, contrasts=contrasts)
    for count, expected in ((5, {"T2w": 3, "T1w": 2}), (4, {"T2w": 2, "T1w": 2}), (10, {"T2w": 6, "T1w": 4})):
        folder = tmp_path / f"sample{count}"
        view = make_session(manifest, folder, seed=1, sample=count, stratify_by="contrast")
        key = load_key(default_key_path(folder), view)
        drawn = [key.metadata[case.case_id]["contrast"] for case in view.cases]
        assert {c: drawn.count(c) for c in set(drawn)} == expected
        assert len(set(case.case_id for case in view.cases)) == count


def test_json_and_csv_manifests_give_the_same_session(tmp_path, sample_data):
    csv_manifest = write_manifest(tmp_path, sample_data, count=3)
    with open(csv_manifest) as stream:
        rows = list(csv.DictReader(stream))
    cases = [{"case_id": r["case_id"], "image": r["image"], "metadata": {"contrast": r["contrast"]},
              "segmentations": [{"source": s, "path": r[f"seg:{s}"]} for s in SOURCES]} for r in rows]
    json_manifest = tmp_path / "manifest.json"
    json_manifest.write_text(json.dumps({"cases": cases}))
    make_session(csv_manifest, tmp_path / "a", seed=4)
    make_session(json_manifest, tmp_path / "b", seed=4)
    assert _without_id(tmp_path / "a") == _without_id(tmp_path / "b")
    assert json.loads(default_key_path(tmp_path / "a").read_text())["cases"] == json.loads(
        default_key_path(tmp_path / "b").read_text())["cases"]


# --------------------------------------------------------------------------- bad input


def _edit_manifest(path, edit):
    with open(path) as stream:
        rows = list(csv.reader(stream))
    edit(rows)
    with open(path, "w", newline="") as stream:
        csv.writer(stream).writerows(rows)


@pytest.mark.parametrize("edit, problem", [
    (lambda rows: rows[2].__setitem__(3, "no_such_mask.nii.gz"), "missing files: .*no_such_mask"),
    (lambda rows: rows[3].__setitem__(0, "sub-00"), "duplicate case ids: \\['sub-00'\\]"),
    (lambda rows: rows[1].__setitem__(4, ""), "no segmentation for source"),
    (lambda rows: rows[1].__setitem__(0, "sub 00/x"), "case id"),
])
def test_bad_manifests_raise_and_create_nothing(tmp_path, sample_data, edit, problem):
    manifest = write_manifest(tmp_path, sample_data, count=4)
    _edit_manifest(manifest, edit)
    with pytest.raises(ManifestError, match=problem) as error:
        make_session(manifest, tmp_path / "session", seed=1)
    assert "manifest.csv" in str(error.value)
    assert not (tmp_path / "session").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".session")]


def test_a_segmentation_off_the_image_grid_is_refused(tmp_path, sample_data):
    manifest = write_manifest(tmp_path, sample_data, count=2)
    other = tmp_path / "cropped_cord.nii.gz"  # the same mask on a smaller grid
    sitk.WriteImage(sitk.ReadImage(str(sample_data.cord))[:, :, 2:-2], str(other))
    _edit_manifest(manifest, lambda rows: rows[2].__setitem__(4, str(other)))
    with pytest.raises(ManifestError, match="not on the grid of its image"):
        make_session(manifest, tmp_path / "session", seed=1)
    assert not (tmp_path / "session").exists() and not default_key_path(tmp_path / "session").exists()


@pytest.mark.parametrize("options, error, problem", [
    ({"sample": 7}, ManifestError, "cannot sample 7 cases"),
    ({"sample": 2, "stratify_by": "scanner"}, ManifestError, "no value in column 'scanner'"),
    ({"stratify_by": "contrast"}, SessionError, "needs a sample size"),
])
def test_impossible_samples_are_refused(tmp_path, sample_data, options, error, problem):
    manifest = write_manifest(tmp_path, sample_data, count=4)
    with pytest.raises(error, match=problem):
        make_session(manifest, tmp_path / "session", seed=1, **options)
    assert not (tmp_path / "session").exists()


def test_an_existing_session_or_key_is_never_overwritten(tmp_path, sample_data):
    manifest = write_manifest(tmp_path, sample_data, count=2)
    make_session(manifest, tmp_path / "session", seed=1)
    before = (tmp_path / "session/session.json").read_bytes()
    with pytest.raises(SessionError, match="not empty; nothing was overwritten"):
        make_session(manifest, tmp_path / "session", seed=2)
    assert (tmp_path / "session/session.json").read_bytes() == before

    key = tmp_path / "kept.key.json"
    key.write_text("precious")
    with pytest.raises(SessionError, match="key file already exists"):
        make_session(manifest, tmp_path / "another", seed=2, key_path=key)
    assert key.read_text() == "precious" and not (tmp_path / "another").exists()


def test_a_key_that_does_not_match_its_session_is_refused(tmp_path, sample_data):
    manifest = write_manifest(tmp_path, sample_data, count=3)
    view = make_session(manifest, tmp_path / "session", seed=1)
    make_session(manifest, tmp_path / "other", seed=2)
    with pytest.raises(KeyMismatchError, match="key of session"):
        load_key(default_key_path(tmp_path / "other"), view)

    key = json.loads(default_key_path(tmp_path / "session").read_text())
    first = view.cases[0].case_id
    key["cases"][first]["items"] = {"A": SOURCES[0], "C": SOURCES[1]}
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(key))
    with pytest.raises(KeyMismatchError, match=f"case '{first}': key items \\['A', 'C'\\]"):
        load_key(edited, view)


def test_a_session_file_that_was_tampered_with_is_refused(tmp_path, sample_data):
    manifest = write_manifest(tmp_path, sample_data, count=2)
    make_session(manifest, tmp_path / "session", seed=1)
    data = json.loads((tmp_path / "session/session.json").read_text())
    data["cases"][0]["items"][0]["path"] = "../../etc/passwd"
    (tmp_path / "session/session.json").write_text(json.dumps(data))
    with pytest.raises(SessionError, match="not inside the session folder"):
        SessionView.load(tmp_path / "session")


# --------------------------------------------------------------------------- command line


def test_cli_make_session_and_status(tmp_path, sample_data, capsys):
    manifest = write_manifest(tmp_path, sample_data, contrasts=["T2w"] * 3 + ["T1w"] * 3)
    code = main(["make-session", str(manifest), "-o", str(tmp_path / "qc"), "--seed", "9", "--sample", "4",
                 "--stratify-by", "contrast", "--label", "1=cord"])
    out = capsys.readouterr().out
    view = SessionView.load(tmp_path / "qc")
    assert code == 0 and view.session_id in out and "4 cases, 8 items" in out
    assert view.labels == {1: "cord"}
    assert main(["status", str(tmp_path / "qc")]) == 0
    assert "0 rater table(s)" in capsys.readouterr().out

    code = main(["make-session", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "qc2")])
    assert code == 1 and "lesionqc: error:" in capsys.readouterr().err and not (tmp_path / "qc2").exists()
    assert main(["make-session", "-o", str(tmp_path / "qc2")]) == 1
    assert "either a manifest or --from-worklist" in capsys.readouterr().err


# --------------------------------------------------------------------------- blinding


def test_the_session_id_depends_on_nothing_in_the_key(tmp_path, sample_data):
    """Issue 15 item 12: the id hashed the item -> source assignment; guessing sources found the key."""
    manifest = write_manifest(tmp_path, sample_data, count=2)
    ids = {make_session(manifest, tmp_path / f"s{n}", seed=1).session_id for n in range(3)}
    assert len(ids) == 3  # same manifest, seed, letters and files: the id carries none of them
    assert all(len(i) == len("lqc-") + 16 and i.startswith("lqc-") for i in ids)
    key = json.loads(default_key_path(tmp_path / "s0").read_text())
    assert key["session_id"] == SessionView.load(tmp_path / "s0").session_id


def test_items_of_a_case_cannot_be_told_apart_by_their_files(tmp_path, sample_data):
    """Issue 15 item 13: gzip-compressed items; the manual mask was the larger file in every case."""
    manifest = write_manifest(tmp_path, sample_data, count=3)
    view = make_session(manifest, tmp_path / "session", seed=8)
    key = load_key(default_key_path(tmp_path / "session"), view)
    for case in view.cases:
        files = [item.path for item in case.items]
        assert {p.suffix for p in files} == {".nii"}  # uncompressed: the size is the grid's, not the content's
        attributes = {(p.stat().st_size, p.stat().st_mode, p.stat().st_mtime_ns) for p in files}
        assert len(attributes) == 1, attributes
        headers = {p.read_bytes()[:352] for p in files}  # NIfTI-1 header and extension flag
        assert len(headers) == 1
        voxels = {key.source(case.case_id, i.item_id): sitk.GetArrayFromImage(sitk.ReadImage(str(i.path))).sum()
                  for i in case.items}
        assert voxels[SOURCES[0]] > voxels[SOURCES[1]]  # the contents differ (eroded copy), the files do not


def test_the_key_is_kept_out_of_the_raters_folder(tmp_path, sample_data):
    """Issue 15 item 14: the key defaulted to SESSION/key.json, inside the folder handed to raters."""
    manifest = write_manifest(tmp_path, sample_data, count=2)
    view = make_session(manifest, tmp_path / "session", seed=1)
    assert default_key_path(tmp_path / "session") == tmp_path / "session-key.json"
    assert (tmp_path / "session-key.json").is_file()
    assert not [p for p in (tmp_path / "session").rglob("*key*")]
    assert load_key(tmp_path / "session-key.json", view).session_id == view.session_id

    with pytest.raises(SessionError, match="inside the session folder handed to the raters"):
        make_session(manifest, tmp_path / "inside", seed=1, key_path=tmp_path / "inside" / "key.json")
    assert not (tmp_path / "inside").exists()
    inside = make_session(manifest, tmp_path / "inside", seed=1, key_path=tmp_path / "inside" / "key.json",
                          key_inside=True)
    assert (tmp_path / "inside/key.json").is_file() and find_key(inside) == tmp_path / "inside/key.json"

    code = main(["make-session", str(manifest), "-o", str(tmp_path / "cli"), "--key", str(tmp_path / "cli/k.json")])
    assert code == 1 and not (tmp_path / "cli").exists()
    assert main(["make-session", str(manifest), "-o", str(tmp_path / "cli"), "--key", str(tmp_path / "cli/k.json"),
                 "--key-inside-session"]) == 0
    assert (tmp_path / "cli/k.json").is_file()


@pytest.mark.parametrize("case_id", ["CON", "nul", "Com1", "LPT9.x", "aux.nii", "sub-01."])
def test_case_ids_that_windows_cannot_name_are_refused(tmp_path, sample_data, case_id):
    manifest = write_manifest(tmp_path, sample_data, count=2)
    _edit_manifest(manifest, lambda rows: rows[1].__setitem__(0, case_id))
    with pytest.raises(ManifestError, match="reserved name such as CON"):
        make_session(manifest, tmp_path / "session", seed=1)


def test_case_ids_differing_only_in_case_are_refused(tmp_path, sample_data):
    manifest = write_manifest(tmp_path, sample_data, count=2)
    _edit_manifest(manifest, lambda rows: rows[2].__setitem__(0, "SUB-00"))
    with pytest.raises(ManifestError, match="duplicate case ids: \\['SUB-00', 'sub-00'\\]"):
        make_session(manifest, tmp_path / "session", seed=1)


def test_repeats_are_shown_later_and_look_like_first_showings(tmp_path, sample_data):
    manifest = write_manifest(tmp_path, sample_data, count=8)
    view = make_session(manifest, tmp_path / "session", seed=6, repeat_fraction=0.25)
    key = load_key(default_key_path(tmp_path / "session"), view)
    shown = [case.case_id for case in view.cases]
    assert shown == [f"case-{n:02d}" for n in range(1, 11)]  # 8 cases + 2 repeats, anonymous, in order
    repeats = [c for c in shown if key.showing[c] == 2]
    assert len(repeats) == 2
    for repeat in repeats:
        first = next(c for c in shown if key.case_of[c] == key.case_of[repeat] and key.showing[c] == 1)
        assert shown.index(repeat) >= shown.index(first) + 2  # later, not straight after
    # Nothing in the rating view tells a repeat: no real case id, same layout and file attributes.
    text = (tmp_path / "session/session.json").read_text()
    assert not any(f"sub-{i:02d}" in text for i in range(8))
    entries = json.loads(text)["cases"]
    assert len({tuple(sorted(e)) for e in entries}) == 1 and len({len(e["items"]) for e in entries}) == 1
    stats = {(p.name, p.stat().st_size, p.stat().st_mtime_ns) for c in view.cases for p in
             [c.image] + [i.path for i in c.items]}
    assert len({s[1:] for s in stats if s[0] == "A.nii"}) == 1 and len({s[2] for s in stats}) == 1
    # The seed fixes the repeats too.
    again = make_session(manifest, tmp_path / "again", seed=6, repeat_fraction=0.25)
    assert json.loads(default_key_path(tmp_path / "again").read_text())["cases"] == json.loads(
        default_key_path(tmp_path / "session").read_text())["cases"]
    assert len(again.cases) == 10
    with pytest.raises(SessionError, match="repeat fraction 1.5"):
        make_session(manifest, tmp_path / "bad", seed=6, repeat_fraction=1.5)


def test_what_the_slicer_module_loads_imports_no_heavy_library():
    """LesionQC.py imports review_state, session (and rater_table): numpy, SimpleITK and the stdlib only."""
    import subprocess
    import sys

    heavy = ("pandas", "scipy", "sklearn", "statsmodels", "pingouin", "krippendorff", "matplotlib", "yaml",
             "torch", "SpinalCordSegLib")
    code = ("import sys; import LesionQCLib.review_state, LesionQCLib.session, LesionQCLib.rater_table; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
