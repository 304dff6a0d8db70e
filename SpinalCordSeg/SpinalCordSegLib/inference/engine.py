"""The inference engine: nnU-Net v2 in process, soft maps on the scan's own grid.

:class:`SegmentationEngine` loads a results folder once (nnU-Net's own
``nnUNetPredictor``) and then predicts any number of scans. By default only the
whole field's own sliding-window tiles around the cord are predicted (the
box of the fast localizer pass plus a margin, see ``tiles.py``); models
trained on sc-crop boxes get the scan cut to the padding of their
``crop_metadata.json`` (sc-crop's box when it is installed). Each scan is
reoriented to the model's orientation, predicted, and brought back, so that
every soft map has exactly the input's size, spacing, origin and direction.

Example:
    >>> import SimpleITK as sitk
    >>> from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine
    >>> engine = SegmentationEngine("models/demo-sc-lesion", InferenceOptions(device="cpu"))  # doctest: +SKIP
    >>> prediction = engine.predict(sitk.ReadImage("sub-01_T2w.nii.gz"))  # doctest: +SKIP
    >>> sorted(prediction.soft_maps)  # doctest: +SKIP
    ['lesion', 'sc']
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import pickle
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..imaging.binarization import DEFAULT_THRESHOLD, above, binarize, cord_structure
from ..models.catalogue import model_note
from .cropping import (CROP_PAD_KEYS, CropBox, box_of_mask, crop, cropbox_image, face_names, load_crop_metadata,
                       pad_box, superior_inferior_axis, truncated_faces, uncrop, uniform_padding)
from ..errors import DeviceUnavailableError, InputImageError, ModelFolderError
from ..imaging.grid import same_grid
from ..imaging.image_io import check_scan, orientation_of, read_image, reorient
from ..models.model_folder import ModelFolder
from ..imaging.sidecar import now
from .localizer import LOCALIZER_MODEL, CordLocalizer, sccrop_box
from .tiles import TileSelection

logger = logging.getLogger(__name__)

#: How many times a localizer box is grown on the faces the prediction reaches before the whole field of view.
MAX_GROWTHS = 3
#: The logit of certain background, where no predicted tile holds a voxel: within nnU-Net's float16 logits, and far
#: enough that sigmoid and softmax give exactly 0 there, as around a cut-out box.
BACKGROUND_LOGIT = 60000.0
#: The stages of ``Timing`` (seconds) in a prediction's provenance, in the order they run; the command line adds
#: ``Reading`` (the scan), ``ModelLoad`` (once per process) and ``Writing`` (the images).
STAGES = ("Reading", "Checks", "ModelLoad", "Localizer", "Preprocessing", "SlidingWindow", "ResamplingBack",
          "Writing")

#: ``progress(fraction, message)``; fraction in [0, 1].
ProgressCallback = Callable[[float, str], None]


@dataclass
class InferenceOptions:
    """How to run a model.

    Attributes:
        device: ``auto`` (CUDA, then Apple MPS, then CPU), ``cuda``, ``mps`` or ``cpu``.
        folds: folds to ensemble; None means every fold present.
        use_mirroring: test-time augmentation by mirroring (off by default, as in
            SCT's ``-test-time-aug``: about 8x slower for a small gain).
        tile_step_size: sliding-window step as a fraction of the patch (0.5 in nnU-Net).
        num_threads: CPU threads for PyTorch; None keeps PyTorch's choice.
        orientation: orientation to predict in when dataset.json records none
            (SimpleITK/nibabel letters: SCT's ``RPI`` is ``LAS``); None means
            no reorientation, as nnU-Net itself does.
        crop: predict only the whole field's tiles around the cord's box (found
            by the localizer) plus ``crop_margin_mm``; False predicts the whole
            field of view. Models trained on sc-crop boxes are always cropped,
            as SCT does.
        crop_margin_mm: margin around the cord's bounding box when cropping.
        whole_if_truncated: redo a default (localizer) crop on the whole field
            of view when the prediction reaches an inner face of the box.
        localizer: the cord model of the localizer pass (a model spec, trusted
            already: catalogue id, installed id or folder).
        offline: never download (sc-crop's detector weights); None reads
            ``SPINALCORDSEG_OFFLINE``.
    """

    device: str = "auto"
    folds: Optional[Sequence[Union[int, str]]] = None
    use_mirroring: bool = False
    tile_step_size: float = 0.5
    num_threads: Optional[int] = None
    orientation: Optional[str] = None
    crop: bool = True
    crop_margin_mm: float = 10.0
    whole_if_truncated: bool = True
    localizer: str = "demo-sc"
    offline: Optional[bool] = None

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
        crop_box: the box the model ran around (by default the cord plus its margin: the whole field's
            tiles around it were predicted, see the provenance's ``Crop``), None for the whole field of view.
    """

    soft_maps: Dict[str, sitk.Image]
    provenance: dict
    warnings: List[str] = field(default_factory=list)
    crop_box: Optional[CropBox] = None

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
    """Resolve ``auto``; return (device, note or None): the note says when ``auto`` falls back to the CPU.

    An explicit device that is missing raises DeviceUnavailableError: a GPU job must not run on the CPU
    unnoticed.
    """
    requested = requested.lower()
    reasons = available_devices()
    if requested == "auto":
        device = next(d for d in ("cuda", "mps", "cpu") if reasons[d] is None)
        note = f"device auto: using the CPU ({reasons['cuda']}; {reasons['mps']})" if device == "cpu" else None
        return device, note
    if requested not in reasons:
        raise ValueError(f"unknown device {requested!r}; choose auto, cuda, mps or cpu")
    if reasons[requested] is not None:
        raise DeviceUnavailableError(f"device {requested} is not available ({reasons[requested]}); "
                                     "choose --device auto or cpu to run on the CPU")
    return requested, None


def _make_predictor(device: str, options: InferenceOptions):
    """An nnUNetPredictor that reports progress per sliding-window tile."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class ProgressPredictor(nnUNetPredictor):
        progress: Optional[ProgressCallback] = None
        #: Only these tiles of the whole field's grid are predicted (see tiles.py); None: all.
        selection: Optional[TileSelection] = None
        _tiles_done = 0
        _tiles_total = 1

        def _internal_get_sliding_window_slicers(self, image_size):
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            if self.selection is not None:
                slicers = [s for s in slicers if self.selection.holds(s[1:])]
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


@dataclass
class _Prepared:
    """A scan through nnU-Net's preprocessing (reoriented, transposed, cropped to its nonzero part, resampled,
    normalized): the scan, it in the model's orientation, nnU-Net's array (channels first) and properties, and the
    network's patch per axis of that array (1: a 2D configuration, slice by slice)."""

    image: sitk.Image
    work: sitk.Image
    data: object
    properties: dict
    patch: Tuple[int, ...]

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape[1:])

    @property
    def padding(self) -> Tuple[int, ...]:
        """Voxels nnU-Net pads before each axis that is shorter than the patch."""
        return tuple(max(0, p - n) // 2 for n, p in zip(self.shape, self.patch))

    @property
    def padded(self) -> Tuple[int, ...]:
        return tuple(max(n, p) for n, p in zip(self.shape, self.patch))


class SegmentationEngine:
    """An nnU-Net v2 model loaded once, ready to predict scans.

    Args:
        model: a results folder (or a folder holding exactly one), or a
            :class:`ModelFolder`. Trust is the caller's business: loading runs
            the checkpoint's pickled code (see ``model_store.resolve_model``).
        options: see :class:`InferenceOptions`.
        model_id: catalogue id recorded in the provenance, when known; a
            catalogue model trained on cropped scans must carry
            ``crop_metadata.json`` (ModelFolderError naming it otherwise).
    """

    def __init__(
        self,
        model: Union[str, Path, ModelFolder],
        options: Optional[InferenceOptions] = None,
        model_id: Optional[str] = None,
    ) -> None:
        import torch

        started = time.perf_counter()
        self.model = model if isinstance(model, ModelFolder) else ModelFolder.open(model)
        self.options = options or InferenceOptions()
        self.folds = self.model.select_folds(self.options.folds)
        if self.model.num_channels != 1:
            raise ModelFolderError(
                f"{self.model.path / 'dataset.json'}: the model expects {self.model.num_channels} input "
                "channels; SpinalCordSeg feeds one scan (1 channel)"
            )
        self.device, note = select_device(self.options.device)
        self.warnings: List[str] = []
        if note:
            logger.info(note)
        if self.options.num_threads:
            torch.set_num_threads(int(self.options.num_threads))
        self.checkpoint_sha256 = self.model.checkpoint_sha256(self.folds)
        self.model_id = model_id
        self.note = model_note(model_id)  # said on every run and recorded with every output
        if self.note:
            logger.warning(self.note)
        entry = _catalogue_entry(model_id)
        #: Padding (mm per face) of a model trained on sc-crop boxes, else None.
        self.crop_padding = load_crop_metadata(self.model.path, required=bool(entry and entry.cropped_input))
        self._predictor = _make_predictor(self.device, self.options)
        self._load_checkpoints()
        #: Seconds this engine took to load (the ``ModelLoad`` stage of ``Timing``).
        self.load_seconds = time.perf_counter() - started

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

    @property
    def spacing(self) -> Tuple[float, ...]:
        """The network's voxel spacing in mm, in nnU-Net's array order (z, y, x) of the model's orientation."""
        return tuple(float(v) for v in self._predictor.configuration_manager.spacing)

    @property
    def patch_size(self) -> Tuple[int, ...]:
        """The network's patch in voxels, array order (z, y, x)."""
        return tuple(int(v) for v in self._predictor.configuration_manager.patch_size)

    @property
    def downsampling(self) -> Tuple[int, ...]:
        """The network's total downsampling per axis (array order z, y, x): a tile's sides must be multiples of it."""
        strides = np.array(self._predictor.configuration_manager.pool_op_kernel_sizes)
        return tuple(int(v) for v in strides.prod(axis=0))

    @contextlib.contextmanager
    def tiles_of(self, patch_size: Sequence[int]):
        """Within the block, predict with sliding-window tiles of ``patch_size`` (array order z, y, x; multiples of
        :attr:`downsampling`) instead of the model's patch: its network is fully convolutional."""
        configuration = self._predictor.configuration_manager.configuration
        previous = configuration["patch_size"]
        configuration["patch_size"] = [int(p) for p in patch_size]
        try:
            yield self
        finally:
            configuration["patch_size"] = previous

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
        crop_box: Optional[CropBox] = None,
    ) -> Prediction:
        """Predict one scan; return soft maps on its own grid.

        Args:
            image: the 3D scan (any orientation, spacing and pixel type).
            crop_mask: a cord mask; when given, prediction runs inside its
                bounding box grown by the model's padding or ``options.crop_margin_mm``.
            progress: called with (fraction, message) while predicting; it may
                raise to stop between tiles.
            name: how messages refer to the scan (usually its path).
            crop_box: a box to predict in, as it is (the user's ROI); overrides
                ``crop_mask`` and the localizer.
        """
        report = progress or (lambda fraction, message: None)
        timing = dict.fromkeys(STAGES[1:-1], 0.0)
        started = time.perf_counter()
        image = check_scan(image, name)
        timing["Checks"], timing["ModelLoad"] = time.perf_counter() - started, self.load_seconds
        if crop_box is None and crop_mask is None and (self.crop_padding is not None or self.options.crop):
            report(0.01, "locating the cord")
        started = time.perf_counter()
        box, crop_record, warnings = self.crop_box_for(image, name, crop_mask=crop_mask, crop_box=crop_box)
        timing["Localizer"] = time.perf_counter() - started
        warnings = list(self.warnings) + warnings
        report(0.1, "preparing the scan")
        if box is not None and self._on_whole_field_tiles(box):
            maps, box, crop_record, more = self._predict_tiles_around(image, box, crop_record, name, report, timing)
            warnings += more
        elif box is not None and not box.covers(image.GetSize()):
            # A model trained on whole scans gets the intensities it would see on the whole scan.
            normalize_like = None if self.crop_padding else image
            maps = {k: uncrop(v, image, box) for k, v in
                    self._predict_maps(crop(image, box), report, normalize_like, timing).items()}
            reached = self._reached(maps, box, image)
            if reached:
                warnings.append(f"{name}: {self._reach_message(reached, image)}; it is likely cut off there: run "
                                "with a larger --crop-margin or --no-crop")
        else:
            maps, box = self._predict_maps(image, report, timing=timing), None
        for soft in maps.values():
            soft.CopyInformation(image)
        report(1.0, "done")
        for warning in warnings[len(self.warnings):]:
            logger.warning(warning)
        provenance = self.provenance()
        provenance["Crop"] = crop_record
        provenance["Timing"] = {stage: round(seconds, 3) for stage, seconds in timing.items()}
        return Prediction(maps, provenance, warnings, box)

    @staticmethod
    def _reached(maps: Dict[str, sitk.Image], box: CropBox, image: sitk.Image) -> Dict[str, List[str]]:
        """Structure -> the inner faces of ``box`` (SCT's keys) its binarized map touches; only those that do."""
        reached = {}
        for structure, soft in maps.items():
            touched = truncated_faces(above(sitk.GetArrayViewFromImage(soft), DEFAULT_THRESHOLD), box, image.GetSize())
            if touched:
                reached[structure] = touched
        return reached

    @staticmethod
    def _reach_message(reached: Dict[str, List[str]], image: sitk.Image) -> str:
        return "; ".join(f"the {structure} prediction reaches the crop box at "
                         + ", ".join(f"{key} ({face})" for key, face in zip(keys, face_names(keys, image)))
                         for structure, keys in reached.items())

    def _on_whole_field_tiles(self, box: CropBox) -> bool:
        """Whether ``box`` is predicted on the whole field's own tiles (the default localizer crop, tiles.py)
        rather than cut out (a user's box, a mask's, a model trained on sc-crop boxes)."""
        return box.source == "localizer" and self.crop_padding is None

    def _predict_tiles_around(self, image: sitk.Image, box: CropBox, record: dict, name: str,
                              report: ProgressCallback, timing: Dict[str, float]):
        """(maps, box or None for the whole field, sidecar record, warnings): of the whole field of view, as
        nnU-Net preprocesses it, only the tiles around ``box`` (tiles.py); where a structure reaches the faces of
        those tiles, the box grows there by the margin (at most MAX_GROWTHS times), then every tile is predicted."""
        prepared = self._prepare(image, timing)
        selection = self._tiles_around(prepared, box)
        grown: List[List[str]] = []
        while selection is not None and not selection.is_whole:
            maps = self._predict_prepared(prepared, report, timing, selection)
            tiles = self._box_of_tiles(prepared, selection)
            record = dict(record, Box=box.to_dict(), Tiles=f"{selection.count} of {selection.total}",
                          TilesBox=tiles.to_dict())
            # The tiles reach beyond the box: a structure is cut off only where it reaches their faces.
            reached = self._reached(maps, tiles, image)
            if not reached:
                return maps, box, dict(record, Grown=grown) if grown else record, []
            if not self.options.whole_if_truncated:
                return maps, box, record, [f"{name}: {self._reach_message(reached, image)}; it is likely cut off "
                                           "there: run with a larger --crop-margin or --no-crop"]
            if len(grown) == MAX_GROWTHS:
                break
            # Most misses are a few mm: the box reaches the tiles' faces that were reached and the margin beyond,
            # in fewer tiles than the whole field.
            faces = sorted({key for keys in reached.values() for key in keys})
            grown.append(face_names(faces, image))
            low, high = list(box.index), list(box.upper)
            for key in faces:
                axis = "xyz".index(key[0])
                if key.endswith("max"):
                    high[axis] = tiles.upper[axis]
                else:
                    low[axis] = tiles.index[axis]
            padding = dict.fromkeys(CROP_PAD_KEYS, 0.0)
            padding.update({f"pad_{face}": max(self.options.crop_margin_mm, 10.0) for face in grown[-1]})
            box = pad_box(CropBox(tuple(low), tuple(h - lo for lo, h in zip(low, high)), box.source), image, padding)
            selection = self._tiles_around(prepared, box)
        warnings = []
        if grown:
            # The default crop is only a shortcut: a structure that goes on past the box even once grown (a missed
            # or wrong cord) gets what an uncropped run gives.
            warnings.append(f"{name}: {self._reach_message(reached, image)}: predicting on the whole field of view "
                            "instead")
            record = {"Source": "whole field of view (the prediction reached the localizer's box)",
                      "Padding_mm": None, "LocalizerBox": record["Box"], "Grown": grown}
        elif selection is None:
            warnings.append(f"{name}: the localizer's box holds none of the scan's nonzero voxels; predicting on "
                            "the whole field of view")
            record = dict(record, Source="whole field of view (the localizer's box is all zero voxels)")
        else:
            record = dict(record, Source="whole field of view (the tiles around the cord are all the tiles)")
        return self._predict_prepared(prepared, report, timing), None, record, warnings

    def crop_box_for(
        self,
        image: sitk.Image,
        name: str = "image",
        crop_mask: Optional[sitk.Image] = None,
        crop_box: Optional[CropBox] = None,
    ) -> Tuple[Optional[CropBox], dict, List[str]]:
        """(box or None for the whole field of view, its sidecar record, warnings) for ``image``.

        In order: the given box; the given mask's box plus padding; for a model
        with ``crop_metadata.json``, sc-crop's box with that padding, else the
        localizer's; with ``options.crop``, the localizer's box plus the margin
        in-plane and the whole length of the scan along the body (the cord runs
        through it; a box cut short there would only risk cutting the cord).
        No cord found: the whole field of view, with a warning.
        """
        warnings: List[str] = []
        padding = self.crop_padding or uniform_padding(self.options.crop_margin_mm)
        record: dict = {"Source": None, "Padding_mm": None}
        if crop_box is not None:
            box = crop_box.clipped(image.GetSize())
        elif crop_mask is not None:
            tight = box_of_mask(crop_mask, image, "mask")
            if tight is None:
                raise InputImageError(f"{name}: the crop mask is empty; cannot crop around the cord")
            box = pad_box(tight, image, padding)
        elif self.crop_padding is not None:
            from .. import paths

            offline = paths.offline() if self.options.offline is None else self.options.offline
            box, why = sccrop_box(image, self.crop_padding, "cuda" if self.device == "cuda" else "cpu", offline)
            if box is None:
                box = self._localizer_box(image, name, padding, whole_length=False)
                warnings.append(f"{name}: {why}; this model was trained on sc-crop boxes: its crop box comes from "
                                "SpinalCordSeg's localizer instead, with the padding of its crop_metadata.json")
        elif self.options.crop:
            if all(n <= p for n, p in zip(image.GetSize(), self._patch_voxels(image))):
                record["Source"] = "whole field of view (it fits one tile: a crop would save nothing)"
                return None, record, warnings
            box = self._localizer_box(image, name, padding, whole_length=True)
        else:
            return None, record, warnings
        if box is None:
            warnings.append(f"{name}: the localizer found no spinal cord; predicting on the whole field of view")
            record["Source"] = "whole field of view (no cord found)"
            return None, record, warnings
        record = {"Source": box.source, "Box": box.to_dict(),
                  "Padding_mm": None if box.source == "user" else padding}
        return box, record, warnings

    def _localizer_box(self, image: sitk.Image, name: str, padding: Dict[str, float],
                       whole_length: bool) -> Optional[CropBox]:
        """The localizer's box plus ``padding``; with ``whole_length``, along the body the whole scan (the cord
        runs through it; a box cut short there would only risk cutting the cord)."""
        mask = cord_localizer(self.options.localizer, self.device, self.options.num_threads).cord_mask(image, name)
        tight = box_of_mask(mask, image, "localizer") if mask is not None else None
        if tight is None:
            return None
        box = pad_box(tight, image, padding)
        if whole_length:
            axis = superior_inferior_axis(image)
            index, size = list(box.index), list(box.size)
            index[axis], size[axis] = 0, image.GetSize()[axis]
            box = CropBox(tuple(index), tuple(size), box.source)
        return box

    def _patch_voxels(self, image: sitk.Image) -> List[int]:
        """The network's patch, in whole voxels of ``image``'s own axes (the most a box may have and fit it)."""
        configuration = self._predictor.configuration_manager
        # nnU-Net's patch and spacing are in array order (z, y, x) of the scan in the model's orientation.
        extent_mm = [p * s for p, s in zip(configuration.patch_size, configuration.spacing)][::-1]
        if self.orientation:
            model_axes = reorient(sitk.Image([2, 2, 2], sitk.sitkUInt8), self.orientation)
            by_world = {int(np.argmax(np.abs(np.array(model_axes.GetDirection()).reshape(3, 3)[:, a]))): extent_mm[a]
                        for a in range(3)}
            direction = np.array(image.GetDirection()).reshape(3, 3)
            extent_mm = [by_world[int(np.argmax(np.abs(direction[:, a])))] for a in range(3)]
        # Rounded down: a box one voxel wider than the patch would take a second tile.
        return [max(1, int(math.floor(mm / spacing + 1e-6))) for mm, spacing in zip(extent_mm, image.GetSpacing())]

    def cord_mask(self, scan: sitk.Image, name: str = "", progress: Optional[ProgressCallback] = None) -> sitk.Image:
        """Binary cord mask of ``scan`` (its cord map, else its first map, at the default threshold), to crop
        another model's input."""
        maps = self.predict(scan, name=name, progress=progress).soft_maps
        return binarize(maps.get(cord_structure(maps), next(iter(maps.values()))), DEFAULT_THRESHOLD)

    def _predict_maps(self, image: sitk.Image, report: ProgressCallback,
                      normalize_like: Optional[sitk.Image] = None,
                      timing: Optional[Dict[str, float]] = None) -> Dict[str, sitk.Image]:
        """Soft maps of ``image`` (on its grid), every tile, adding the seconds of each stage to ``timing``."""
        timing = {} if timing is None else timing
        return self._predict_prepared(self._prepare(image, timing, normalize_like), report, timing)

    def _prepare(self, image: sitk.Image, timing: Dict[str, float],
                 normalize_like: Optional[sitk.Image] = None) -> _Prepared:
        """``image`` through nnU-Net's preprocessing, as ``nnUNetPredictor.predict_single_npy_array`` runs it;
        z-scored with ``normalize_like``'s statistics when given (a crop of it)."""
        from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy

        started = time.perf_counter()
        work = reorient(image, self.orientation) if self.orientation else image
        array = sitk.GetArrayFromImage(work).astype(np.float32)[None]
        predictor = self._predictor
        configuration = predictor.configuration_manager.configuration
        schemes = configuration["normalization_schemes"]
        if normalize_like is not None and self._zscore_on_whole_image():
            mean, std = _zscore_statistics(normalize_like)
            array = (array - mean) / max(std, 1e-8)
            configuration["normalization_schemes"] = ["NoNormalization"]
        try:
            prepared = next(PreprocessAdapterFromNpy(
                [array], [None], [{"spacing": list(work.GetSpacing())[::-1]}], [None], predictor.plans_manager,
                predictor.dataset_json, predictor.configuration_manager, num_threads_in_multithreaded=1))
        finally:
            configuration["normalization_schemes"] = schemes
        patch = list(predictor.configuration_manager.patch_size)
        patch = [1] * (array.ndim - 1 - len(patch)) + patch  # a 2D configuration predicts slice by slice
        timing["Preprocessing"] = timing.get("Preprocessing", 0.0) + time.perf_counter() - started
        return _Prepared(image, work, prepared["data"], prepared["data_properties"], tuple(patch))

    def _predict_prepared(self, prepared: _Prepared, report: ProgressCallback, timing: Dict[str, float],
                          selection: Optional[TileSelection] = None) -> Dict[str, sitk.Image]:
        """Soft maps of a prepared scan on its own grid: every tile, or only the tiles of ``selection`` (no tile
        holds the rest of the field: background)."""
        import torch
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        predictor = self._predictor
        predictor.progress, predictor.selection, predictor._tiles_done = report, selection, 0
        started = time.perf_counter()
        try:
            logits = predictor.predict_logits_from_preprocessed_data(torch.as_tensor(prepared.data)).cpu()
        finally:
            predictor.progress = predictor.selection = None
        resampled = time.perf_counter()
        if selection is not None:
            # nnU-Net's blend divides 0 by 0 where no tile was predicted: there, certain background.
            background = torch.tensor(self._background_logits(), dtype=logits.dtype)
            logits = torch.where(torch.isnan(logits[:1]), background.reshape(-1, *[1] * (logits.ndim - 1)), logits)
        report(0.92, "writing soft maps")
        _, probabilities = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager,
            prepared.properties, return_probabilities=True)
        maps: Dict[str, sitk.Image] = {}
        for structure, channel in self._channels().items():
            soft = sitk.GetImageFromArray(np.clip(probabilities[channel], 0, 1).astype(np.float32))
            soft.CopyInformation(prepared.work)
            soft = reorient(soft, orientation_of(prepared.image))
            if not same_grid(prepared.image, soft):
                raise InputImageError(f"internal error: reoriented map does not match the scan grid of "
                                      f"{prepared.image}")
            maps[structure] = soft
        timing["SlidingWindow"] = timing.get("SlidingWindow", 0.0) + resampled - started
        timing["ResamplingBack"] = timing.get("ResamplingBack", 0.0) + time.perf_counter() - resampled
        return maps

    def _background_logits(self) -> List[float]:
        """Logits of certain background: -BACKGROUND_LOGIT for every region (sigmoid), or +BACKGROUND_LOGIT for
        the background label only (softmax)."""
        heads = self._predictor.label_manager.num_segmentation_heads
        if self.model.is_region_based:
            return [-BACKGROUND_LOGIT] * heads
        return [BACKGROUND_LOGIT] + [-BACKGROUND_LOGIT] * (heads - 1)

    def _tiles_around(self, prepared: _Prepared, box: CropBox) -> Optional[TileSelection]:
        """The whole field's tiles around ``box`` (tiles.py), or None when the box misses the scan's nonzero part
        (nnU-Net crops the rest away)."""
        mask = cropbox_image(box, prepared.image)
        mask = reorient(mask, self.orientation) if self.orientation else mask
        array = sitk.GetArrayViewFromImage(mask).transpose(self._predictor.plans_manager.transpose_forward)
        array = array[tuple(slice(low, high) for low, high in prepared.properties["bbox_used_for_cropping"])]
        ranges = []
        for axis, (old, new, offset) in enumerate(zip(array.shape, prepared.shape, prepared.padding)):
            inside = np.nonzero(array.any(axis=tuple(a for a in range(array.ndim) if a != axis)))[0]
            if inside.size == 0:
                return None
            ranges.append((int(math.floor(inside[0] * new / old)) + offset,
                           int(math.ceil((inside[-1] + 1) * new / old)) + offset))
        return TileSelection.around(prepared.padded, prepared.patch, self.options.tile_step_size, ranges)

    def _box_of_tiles(self, prepared: _Prepared, selection: TileSelection) -> CropBox:
        """The voxels of the scan (its own grid) that the tiles of ``selection`` hold whole (rounded inwards: the
        voxel across a face mixes the tiles with the background when resampled back)."""
        properties = prepared.properties
        array = np.zeros(properties["shape_before_cropping"], dtype=np.uint8)
        region = []
        for (low, high), (first, last), new, offset in zip(selection.coverage, properties["bbox_used_for_cropping"],
                                                           prepared.shape, prepared.padding):
            old = last - first
            low, high = max(0, low - offset), min(new, high - offset)
            start, end = int(math.ceil(low * old / new - 1e-6)), int(math.floor(high * old / new + 1e-6))
            # A face at the array's end is the scan's own: its last voxel is whole.
            start, end = (first if low == 0 else first + start), (last if high == new else first + end)
            region.append(slice(start, max(end, start + 1)))
        array[tuple(region)] = 1
        mask = sitk.GetImageFromArray(array.transpose(self._predictor.plans_manager.transpose_backward))
        mask.CopyInformation(prepared.work)
        return box_of_mask(reorient(mask, orientation_of(prepared.image)), prepared.image, "localizer")

    def _zscore_on_whole_image(self) -> bool:
        """True when nnU-Net z-scores each scan over all its voxels (the plans' usual CT-free setting)."""
        configuration = self._predictor.configuration_manager.configuration
        return (configuration["normalization_schemes"] == ["ZScoreNormalization"]
                and not any(configuration.get("use_mask_for_norm") or []))

    def _channels(self) -> Dict[str, int]:
        """Structure name -> channel of nnU-Net's probability array."""
        if self.model.is_region_based:
            return {name: index for index, name in enumerate(self.structures)}
        label_values = self._predictor.label_manager.all_labels
        labels = self.model.labels
        return {name: label_values.index(labels[name]) for name in self.structures}

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



def _zscore_statistics(image: sitk.Image) -> Tuple[float, float]:
    """Mean and SD nnU-Net's ZScoreNormalization takes over this scan: inside its nonzero bounding box."""
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero

    data, _, _ = crop_to_nonzero(sitk.GetArrayFromImage(image).astype(np.float32)[None])
    return float(data.mean()), float(data.std())


def _catalogue_entry(model_id: Optional[str]):
    """The catalogue entry of ``model_id``, or None."""
    from ..models.catalogue import load_catalogue

    return load_catalogue().get(model_id) if model_id else None


#: Warm localizers by (model, device, threads), shared by the engines of a process (the worker keeps them).
_LOCALIZERS: Dict[Tuple[str, str, Optional[int]], object] = {}


def cord_localizer(model: str = LOCALIZER_MODEL, device: str = "cpu", num_threads: Optional[int] = None):
    """The warm :class:`~SpinalCordSegLib.inference.localizer.CordLocalizer` of ``model`` on ``device``.

    Tiles side by side (step 1) and no mirroring: a box needs no fine edges. The
    model is resolved offline (never asks): the embedded model is pinned.
    No model id is given: its maps only give the box, so no demo-model note
    (the model that writes says its own).
    """
    from ..models.model_store import resolve_model

    key = (model, device, num_threads)
    if key not in _LOCALIZERS:
        resolved = resolve_model(model, offline=True)
        options = InferenceOptions(device=device, use_mirroring=False, tile_step_size=1.0, num_threads=num_threads,
                                   orientation=resolved.orientation, crop=False)
        _LOCALIZERS[key] = CordLocalizer(SegmentationEngine(resolved.folder, options))
    return _LOCALIZERS[key]
