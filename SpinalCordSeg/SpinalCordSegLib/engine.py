"""The inference engine: nnU-Net v2 in process, soft maps on the scan's own grid.

:class:`SegmentationEngine` loads a results folder once (nnU-Net's own
``nnUNetPredictor``) and then predicts any number of scans. Each scan is
reoriented to the model's orientation, optionally cropped around the cord,
predicted, and brought back, so that every soft map has exactly the input's
size, spacing, origin and direction.

Example:
    >>> import SimpleITK as sitk
    >>> from SpinalCordSegLib.engine import InferenceOptions, SegmentationEngine
    >>> engine = SegmentationEngine("models/demo-sc-lesion", InferenceOptions(device="cpu"))  # doctest: +SKIP
    >>> prediction = engine.predict(sitk.ReadImage("sub-01_T2w.nii.gz"))  # doctest: +SKIP
    >>> sorted(prediction.soft_maps)  # doctest: +SKIP
    ['lesion', 'sc']
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from . import __version__
from .catalogue import model_note
from .errors import InputImageError, ModelFolderError
from .grid import same_grid
from .image_io import check_scan, orientation_of, read_image, reorient
from .model_folder import ModelFolder
from .binarization import binarize
from .sidecar import now

logger = logging.getLogger(__name__)

#: ``progress(fraction, message)``; fraction in [0, 1].
ProgressCallback = Callable[[float, str], None]


@dataclass
class InferenceOptions:
    """How to run a model.

    Attributes:
        device: ``auto`` (CUDA, then Apple MPS, then CPU), ``cuda``, ``mps`` or ``cpu``.
        folds: folds to ensemble; None means every fold present.
        use_mirroring: test-time augmentation by mirroring (nnU-Net's default).
        tile_step_size: sliding-window step as a fraction of the patch (0.5 in nnU-Net).
        num_threads: CPU threads for PyTorch; None keeps PyTorch's choice.
        orientation: orientation to predict in when dataset.json records none
            (SimpleITK/nibabel letters: SCT's ``RPI`` is ``LAS``); None means
            no reorientation, as nnU-Net itself does.
        crop_margin_mm: margin around the cord mask's bounding box when cropping.
    """

    device: str = "auto"
    folds: Optional[Sequence[Union[int, str]]] = None
    use_mirroring: bool = True
    tile_step_size: float = 0.5
    num_threads: Optional[int] = None
    orientation: Optional[str] = None
    crop_margin_mm: float = 20.0

    def to_dict(self) -> dict:
        """Plain-JSON form (for the worker protocol and provenance)."""
        data = asdict(self)
        data["folds"] = [str(f) for f in self.folds] if self.folds else None
        return data


@dataclass
class Prediction:
    """The engine's result for one scan.

    Attributes:
        soft_maps: structure name -> float32 probability map on the input grid.
        provenance: the ``GeneratedBy`` entry of the automatic step.
        warnings: messages the user should see (device fallback, crop touched...).
    """

    soft_maps: Dict[str, sitk.Image]
    provenance: dict
    warnings: List[str] = field(default_factory=list)

    @property
    def structures(self) -> List[str]:
        """Structure names, in the model's output order."""
        return list(self.soft_maps)


def available_devices() -> Dict[str, Optional[str]]:
    """Each device name mapped to None when usable, else the reason it is not."""
    import torch

    reasons: Dict[str, Optional[str]] = {"cpu": None}
    reasons["cuda"] = None if torch.cuda.is_available() else "no CUDA GPU visible to PyTorch"
    mps = getattr(torch.backends, "mps", None)
    reasons["mps"] = None if mps is not None and mps.is_available() else "Apple MPS not available"
    return reasons


def select_device(requested: str) -> Tuple[str, Optional[str]]:
    """Resolve ``auto`` and unavailable devices; return (device, warning or None)."""
    requested = requested.lower()
    reasons = available_devices()
    if requested == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if reasons[d] is None), None
    if requested not in reasons:
        raise ValueError(f"unknown device {requested!r}; choose auto, cuda, mps or cpu")
    if reasons[requested] is not None:
        return "cpu", f"device {requested} unavailable ({reasons[requested]}); using the CPU"
    return requested, None


def _make_predictor(device: str, options: InferenceOptions):
    """An nnUNetPredictor that reports progress per sliding-window tile."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class ProgressPredictor(nnUNetPredictor):
        progress: Optional[ProgressCallback] = None
        _tiles_done = 0
        _tiles_total = 1

        def _internal_get_sliding_window_slicers(self, image_size):
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            self._tiles_total = max(1, len(slicers) * len(self.list_of_parameters))
            return slicers

        def _internal_maybe_mirror_and_predict(self, x):
            result = super()._internal_maybe_mirror_and_predict(x)
            self._tiles_done += 1
            if self.progress is not None:
                # Prediction is most of the time; preprocessing and export share the rest.
                fraction = 0.1 + 0.8 * min(1.0, self._tiles_done / self._tiles_total)
                self.progress(fraction, f"predicting tile {self._tiles_done}/{self._tiles_total}")
            return result

    # nnU-Net prints a note about perform_everything_on_device for every CPU predictor; keep it off stdout.
    with contextlib.redirect_stdout(io.StringIO()):
        return ProgressPredictor(
            tile_step_size=options.tile_step_size,
            use_gaussian=True,
            use_mirroring=options.use_mirroring,
            perform_everything_on_device=device == "cuda",
            device=torch.device(device),
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )


class SegmentationEngine:
    """An nnU-Net v2 model loaded once, ready to predict scans.

    Args:
        model: a results folder (or a folder holding exactly one), or a
            :class:`ModelFolder`. Trust is the caller's business: loading runs
            the checkpoint's pickled code (see ``model_store.resolve_model``).
        options: see :class:`InferenceOptions`.
        model_id: catalogue id recorded in the provenance, when known.
    """

    def __init__(
        self,
        model: Union[str, Path, ModelFolder],
        options: Optional[InferenceOptions] = None,
        model_id: Optional[str] = None,
    ) -> None:
        import torch

        self.model = model if isinstance(model, ModelFolder) else ModelFolder.open(model)
        self.options = options or InferenceOptions()
        self.folds = self.model.select_folds(self.options.folds)
        if self.model.num_channels != 1:
            raise ModelFolderError(
                f"{self.model.path / 'dataset.json'}: the model expects {self.model.num_channels} input "
                "channels; SpinalCordSeg feeds one scan (1 channel)"
            )
        self.device, warning = select_device(self.options.device)
        self.warnings = [warning] if warning else []
        if warning:
            logger.warning(warning)
        if self.options.num_threads:
            torch.set_num_threads(int(self.options.num_threads))
        self.checkpoint_sha256 = self.model.checkpoint_sha256(self.folds)
        self.model_id = model_id
        self.note = model_note(model_id)  # said on every run and recorded with every output
        if self.note:
            logger.warning(self.note)
        self._predictor = _make_predictor(self.device, self.options)
        self._load_checkpoints()

    def _load_checkpoints(self) -> None:
        try:
            self._predictor.initialize_from_trained_model_folder(
                str(self.model.path), use_folds=tuple(self.folds), checkpoint_name=self.model.checkpoint_name
            )
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError) as error:
            raise ModelFolderError(self._describe_load_error(error)) from error

    def _describe_load_error(self, error: Exception) -> str:
        """Name the checkpoint that fails to load, trying each fold alone."""
        import torch

        for fold in self.folds:
            path = self.model.checkpoint_path(fold)
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as fold_error:  # any failure here is the corrupt file we look for
                return f"{path}: cannot load checkpoint ({type(fold_error).__name__}: {fold_error})"
            missing = {"network_weights", "trainer_name", "init_args"} - set(checkpoint)
            if missing:
                return f"{path}: not an nnU-Net v2 checkpoint (missing {sorted(missing)})"
        return f"{self.model.path}: cannot build the network from its checkpoints ({error})"

    @property
    def structures(self) -> List[str]:
        """Names of the soft maps this model produces."""
        return self.model.structures

    @property
    def orientation(self) -> Optional[str]:
        """Orientation the model predicts in (dataset.json, else the options), or None."""
        return self.model.image_orientation or (self.options.orientation or None)

    def provenance(self) -> dict:
        """The ``GeneratedBy`` entry describing this engine's automatic step."""
        from importlib.metadata import version

        return {
            "Name": "SpinalCordSeg",
            "Version": __version__,
            "Description": "nnU-Net v2 inference",
            "nnUNetVersion": version("nnunetv2"),
            "Model": str(self.model.path),
            "ModelId": self.model_id,
            "ModelSha256": self.checkpoint_sha256,
            "Folds": list(self.folds),
            "Mirroring": self.options.use_mirroring,
            "TileStepSize": self.options.tile_step_size,
            "Orientation": self.orientation,
            "Device": self.device,
            "Date": now(),
            **({"Note": self.note} if self.note else {}),
        }

    def predict(
        self,
        image: sitk.Image,
        crop_mask: Optional[sitk.Image] = None,
        progress: Optional[ProgressCallback] = None,
        name: str = "image",
    ) -> Prediction:
        """Predict one scan; return soft maps on its own grid.

        Args:
            image: the 3D scan (any orientation, spacing and pixel type).
            crop_mask: a cord mask; when given, prediction runs inside its
                bounding box grown by ``options.crop_margin_mm``.
            progress: called with (fraction, message) while predicting; it may
                raise to stop between tiles.
            name: how messages refer to the scan (usually its path).
        """
        report = progress or (lambda fraction, message: None)
        image = check_scan(image, name)
        warnings = list(self.warnings)
        region = None
        work = image
        if crop_mask is not None:
            region = self._crop_region(image, crop_mask, name)
            work = sitk.RegionOfInterest(image, region[1], region[0])
        report(0.02, "preparing the scan")
        maps = self._predict_maps(work, report)
        if region is not None:
            touched = self._touches_crop_box(maps, region, image.GetSize())
            if touched:
                warnings.append(
                    f"{name}: the prediction touches the crop box ({', '.join(touched)}); "
                    "increase the crop margin"
                )
            maps = {k: self._uncrop(v, image, region[0]) for k, v in maps.items()}
        for soft in maps.values():
            soft.CopyInformation(image)
        report(1.0, "done")
        for warning in warnings[len(self.warnings):]:
            logger.warning(warning)
        return Prediction(maps, self.provenance(), warnings)

    def cord_mask(self, scan: sitk.Image, name: str = "") -> sitk.Image:
        """Binary cord mask of ``scan`` (its ``sc`` map, else its first map, at 0.5), to crop another model's input."""
        maps = self.predict(scan, name=name).soft_maps
        return binarize(maps.get("sc", next(iter(maps.values()))), 0.5)

    def _predict_maps(self, image: sitk.Image, report: ProgressCallback) -> Dict[str, sitk.Image]:
        original_orientation = orientation_of(image)
        work = reorient(image, self.orientation) if self.orientation else image
        array = sitk.GetArrayFromImage(work).astype(np.float32)[None]
        properties = {"spacing": list(work.GetSpacing())[::-1]}
        predictor = self._predictor
        predictor.progress = report
        predictor._tiles_done = 0
        try:
            _, probabilities = predictor.predict_single_npy_array(array, properties, None, None, True)
        finally:
            predictor.progress = None
        report(0.92, "writing soft maps")
        maps: Dict[str, sitk.Image] = {}
        for structure, channel in self._channels().items():
            soft = sitk.GetImageFromArray(np.clip(probabilities[channel], 0, 1).astype(np.float32))
            soft.CopyInformation(work)
            soft = reorient(soft, original_orientation)
            if not same_grid(image, soft):
                raise InputImageError(f"internal error: reoriented map does not match the scan grid of {image}")
            maps[structure] = soft
        return maps

    def _channels(self) -> Dict[str, int]:
        """Structure name -> channel of nnU-Net's probability array."""
        if self.model.is_region_based:
            return {name: index for index, name in enumerate(self.structures)}
        label_values = self._predictor.label_manager.all_labels
        labels = self.model.labels
        return {name: label_values.index(labels[name]) for name in self.structures}

    def _crop_region(
        self, image: sitk.Image, mask: sitk.Image, name: str
    ) -> Tuple[List[int], List[int]]:
        """(index, size) of the mask's bounding box grown by the margin, within the image."""
        if not same_grid(image, mask):
            mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        array = sitk.GetArrayViewFromImage(mask) > 0
        if not array.any():
            raise InputImageError(f"{name}: the crop mask is empty; cannot crop around the cord")
        nonzero = np.nonzero(array)
        margin = [int(np.ceil(self.options.crop_margin_mm / s)) for s in image.GetSpacing()]
        size = image.GetSize()
        low = [max(0, int(nonzero[2 - d].min()) - margin[d]) for d in range(3)]
        high = [min(size[d], int(nonzero[2 - d].max()) + 1 + margin[d]) for d in range(3)]
        return low, [h - lo for lo, h in zip(low, high)]

    @staticmethod
    def _touches_crop_box(
        maps: Dict[str, sitk.Image], region: Tuple[List[int], List[int]], full_size: Sequence[int]
    ) -> List[str]:
        """Structures whose binarized map reaches a crop face that is not the image border."""
        index, size = region
        touched = []
        for structure, soft in maps.items():
            mask = sitk.GetArrayViewFromImage(soft) >= 0.5
            for d in range(3):
                axis = 2 - d  # numpy axis of image dimension d
                faces = []
                if index[d] > 0:
                    faces.append(0)
                if index[d] + size[d] < full_size[d]:
                    faces.append(size[d] - 1)
                if any(np.take(mask, face, axis=axis).any() for face in faces):
                    touched.append(structure)
                    break
        return touched

    @staticmethod
    def _uncrop(soft: sitk.Image, reference: sitk.Image, index: Sequence[int]) -> sitk.Image:
        full = sitk.Image(reference.GetSize(), sitk.sitkFloat32)
        full.CopyInformation(reference)
        return sitk.Paste(full, soft, soft.GetSize(), [0, 0, 0], [int(i) for i in index])

    def close(self) -> None:
        """Free the network (and GPU memory)."""
        import torch

        self._predictor = None
        if self.device == "cuda":
            torch.cuda.empty_cache()


def load_crop_mask(path: Union[str, Path]) -> sitk.Image:
    """Read a cord mask used for cropping (any pixel type; > 0 is inside), checked as every image file is."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: crop mask not found")
    return read_image(path)

