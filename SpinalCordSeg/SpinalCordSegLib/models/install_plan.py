"""What Slicer's Python lacks for SpinalCordSeg, how to install it, and how an install went.

Slicer ships numpy, scipy, SimpleITK, VTK, requests, pydicom and packaging
(see its ``SuperBuild/External_python-*.cmake``), so the module loads with
those only; everything else it needs (PyTorch, nnU-Net, pandas for the
worklist, platformdirs for the model store, tqdm for downloads) is found
here and installed on the first Apply, after the user confirms:

- nnU-Net (with a matching PyTorch) by SlicerNNUnet's installer when the
  NNUNet and PyTorch extensions are present;
- else PyTorch by the PyTorch extension (a build for this computer's GPU)
  when present, and nnU-Net by pip;
- else by ``slicer.util.pip_install``; the small packages always by pip.

Example:
    >>> from SpinalCordSegLib.models.install_plan import install_plan
    >>> [(s.method, s.requirement) for s in install_plan(["torch", "nnunetv2", "pandas"], False, True)]
    [('pytorch_extension', 'torch'), ('pip', 'nnunetv2'), ('pip', 'pandas')]
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

#: Import name -> pip requirement of everything SpinalCordSeg needs beyond what Slicer ships,
#: in install order (PyTorch before nnU-Net, so nnU-Net's dependencies never replace it).
REQUIRED_PACKAGES = {
    "torch": "torch",
    "nnunetv2": "nnunetv2",
    "pandas": "pandas",
    "platformdirs": "platformdirs",
    "tqdm": "tqdm",
}


def missing_packages(find_spec: Callable[[str], object] = importlib.util.find_spec) -> List[str]:
    """Import names of the required packages that this Python cannot import."""
    return [name for name in REQUIRED_PACKAGES if find_spec(name) is None]


@dataclass(frozen=True)
class InstallStep:
    """How one part of the set-up is installed.

    ``method`` is ``"slicer_nnunet"`` (SlicerNNUnet's InstallLogic installs
    nnU-Net and a matching PyTorch through the PyTorch extension),
    ``"pytorch_extension"`` (PyTorchUtils installs a PyTorch built for this
    computer's GPU) or ``"pip"`` (``slicer.util.pip_install(requirement)``).
    """

    package: str
    method: str
    requirement: str
    description: str


def install_plan(missing: Sequence[str], has_slicer_nnunet: bool, has_pytorch_extension: bool) -> List[InstallStep]:
    """Steps that install the ``missing`` packages, best tool first.

    SlicerNNUnet's installer needs the PyTorch extension, so it is used only
    when both extensions are present.
    """
    steps = []
    if "nnunetv2" in missing and has_slicer_nnunet and has_pytorch_extension:
        steps.append(InstallStep("nnunetv2", "slicer_nnunet", "nnunetv2",
                                 "nnU-Net and PyTorch with the SlicerNNUnet extension's installer"))
    else:
        if "torch" in missing and has_pytorch_extension:
            steps.append(InstallStep("torch", "pytorch_extension", "torch",
                                     "PyTorch built for this computer's GPU, with the PyTorch extension"))
        elif "torch" in missing:
            steps.append(InstallStep("torch", "pip", "torch", "PyTorch from PyPI (pip; install the PyTorch "
                                                             "extension first for a build matched to your GPU)"))
        if "nnunetv2" in missing:
            steps.append(InstallStep("nnunetv2", "pip", "nnunetv2", "nnU-Net v2 from PyPI (pip)"))
    for name, requirement in REQUIRED_PACKAGES.items():
        if name in missing and name not in ("torch", "nnunetv2"):
            steps.append(InstallStep(name, "pip", requirement, f"{requirement} from PyPI (pip)"))
    return steps


def install_question(steps: Sequence[InstallStep]) -> str:
    """The confirmation shown before installing."""
    lines = "\n".join(f"- {step.description}" for step in steps)
    return ("SpinalCordSeg needs PyTorch, nnU-Net and a few small packages in Slicer's Python. Install them now? "
            f"This downloads several hundred MB and can take a few minutes:\n{lines}")


def dependency_status(missing: Sequence[str]) -> str:
    """The panel's line about the set-up ('' when nothing is missing)."""
    if not missing:
        return ""
    return f"Missing in Slicer's Python: {', '.join(missing)}. They are installed once, on the first Apply."


@dataclass
class InstallOutcome:
    """How an install went.

    Attributes:
        ready: everything required can be imported now.
        restart_needed: Slicer must restart before the packages can be used.
        declined: the user said no; nothing was installed.
        remaining: import names still missing.
        error: why an install step failed (None when none did).
        done: the steps that finished.
    """

    ready: bool
    restart_needed: bool = False
    declined: bool = False
    remaining: List[str] = field(default_factory=list)
    error: Optional[str] = None
    done: List[InstallStep] = field(default_factory=list)

    def message(self) -> str:
        """What the panel tells the user afterwards ('' when ready and nothing else to say)."""
        if self.error:
            return f"Installing the dependencies failed: {self.error}. See the Python console."
        if self.restart_needed:
            return "Slicer must restart to finish the set-up."
        if self.declined:
            return "The set-up was not run: PyTorch and nnU-Net are needed to segment."
        if self.remaining:
            return (f"Still missing after the install: {', '.join(self.remaining)}. "
                    "See the Python console for pip's messages.")
        return ""


def run_install(
    steps: Sequence[InstallStep],
    install_step: Callable[[InstallStep], bool],
    report: Callable[[str], None],
    find_spec: Callable[[str], object] = importlib.util.find_spec,
) -> InstallOutcome:
    """Run the steps one after the other, never raising: a failure stops the install and is returned.

    ``install_step`` installs one step and returns True when Slicer must
    restart; ``report`` is told what is being installed, then ``''`` once the
    install stopped, so the panel never stays on "Installing...".
    """
    outcome = InstallOutcome(ready=False)
    try:
        for step in steps:
            report(f"Installing {step.description}...")
            outcome.restart_needed |= bool(install_step(step))
            outcome.done.append(step)
    except Exception as error:  # any installer failure is shown to the user; the traceback goes to the log
        logging.exception("SpinalCordSeg: installing %s failed", step.requirement)
        outcome.error = f"{step.requirement}: {error}"
    finally:
        report("")
    importlib.invalidate_caches()  # let find_spec see what pip just installed
    outcome.remaining = missing_packages(find_spec)
    outcome.ready = not outcome.remaining and not outcome.restart_needed and outcome.error is None
    return outcome
