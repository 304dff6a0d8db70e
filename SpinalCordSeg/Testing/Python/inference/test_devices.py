"""The device list (SpinalCordSegLib.inference.devices)."""

from SpinalCordSegLib.inference.devices import device_choices


def test_device_choices_grey_out_unavailable_devices_with_reasons():
    choices = {c.name: c for c in device_choices({"cpu": None, "cuda": None, "mps": "Apple MPS not available"})}
    assert list(choices) == ["auto", "cuda", "mps", "cpu"]
    assert choices["auto"].label == "Automatic (CUDA GPU)"
    assert choices["mps"].enabled is False and choices["mps"].reason == "Apple MPS not available"
    assert choices["cuda"].enabled and choices["cpu"].enabled


def test_device_choices_without_pytorch_offer_cpu_only():
    choices = {c.name: c for c in device_choices(None)}
    assert choices["auto"].label == "Automatic (CPU)"
    assert not choices["cuda"].enabled and "PyTorch is not installed" in choices["cuda"].reason
