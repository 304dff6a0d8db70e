"""What Slicer's Python lacks and how it is installed (SpinalCordSegLib.models.install_plan)."""

from SpinalCordSegLib.models.install_plan import install_plan, install_question, missing_packages


def test_missing_packages_are_found_by_import_spec():
    assert missing_packages(lambda name: None if name == "nnunetv2" else object()) == ["nnunetv2"]


def test_install_plan_prefers_slicer_nnunet_then_the_pytorch_extension_then_pip():
    assert install_plan([], True, True) == []
    steps = install_plan(["torch", "nnunetv2", "platformdirs"], has_slicer_nnunet=True, has_pytorch_extension=True)
    assert [(s.package, s.method) for s in steps] == [("nnunetv2", "slicer_nnunet"), ("platformdirs", "pip")]
    # SlicerNNUnet installs PyTorch through the PyTorch extension: without it, pip.
    steps = install_plan(["nnunetv2", "torch"], has_slicer_nnunet=True, has_pytorch_extension=False)
    assert [(s.package, s.method) for s in steps] == [("torch", "pip"), ("nnunetv2", "pip")]
    steps = install_plan(["torch", "nnunetv2"], has_slicer_nnunet=False, has_pytorch_extension=True)
    assert [(s.package, s.method) for s in steps] == [("torch", "pytorch_extension"), ("nnunetv2", "pip")]
    assert "PyTorch extension" in install_question(steps)
