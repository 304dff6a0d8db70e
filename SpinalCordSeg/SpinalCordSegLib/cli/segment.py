"""``spinalcordseg segment`` and ``spinalcordseg demo``.

Example:
    $ spinalcordseg segment -i sub-01_T2w.nii.gz sub-02_T2w.nii.gz -m demo-sc-lesion -o out/ --threshold lesion=0.3
    $ spinalcordseg demo
"""

from __future__ import annotations

import argparse
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from ..imaging.binarization import MaskOptions, parse_thresholds, threshold_items
from ..errors import InputImageError, SpinalCordSegError
from ..models.catalogue import DEMO_MODEL
from .arguments import number

logger = logging.getLogger(__name__)

DEMO_OUTPUT = "spinalcordseg-demo-output"
DEVICE_HELP = ("where to run (default: auto = CUDA, then MPS, then the CPU, saying so when it falls back); "
               "an explicit cuda or mps that is missing is an error")
#: Orientation letter -> axis (SimpleITK letters).
AXIS_OF = {"R": "x", "L": "x", "A": "y", "P": "y", "S": "z", "I": "z"}
#: A crop margin past this (1 m) is a typo: the whole field of view is --no-crop.
MAX_CROP_MARGIN_MM = 1000.0


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs a model."""
    parser.add_argument("-m", "--model", required=True,
                        help="catalogue id (see 'spinalcordseg models list'), model folder or zip")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help=DEVICE_HELP)
    parser.add_argument("--folds", nargs="+", help="folds to ensemble (default: all present)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation by mirroring (off by default: about 8x slower)")
    parser.add_argument("--no-tta", action="store_true", help="deprecated: mirroring is off by default")
    parser.add_argument("--step-size", type=number(float, above=0, maximum=1), default=None,
                        help="sliding-window step, fraction of a patch (default: nnU-Net's 0.5)")
    parser.add_argument("--threads", type=number(int, minimum=1), help="CPU threads for PyTorch")
    parser.add_argument("--threshold", help="binarization threshold(s): 0.5, or sc=0.5,lesion=0.3")
    add_mask_arguments(parser)
    parser.add_argument("--orientation", help="orientation to predict in when the model records none "
                                              "(SimpleITK letters; SCT's RPI is LAS)")
    crop = parser.add_mutually_exclusive_group()
    crop.add_argument("--crop-mask", help="cord mask: predict only inside its bounding box plus a margin")
    crop.add_argument("--crop-with", metavar="CORD_MODEL",
                      help="segment the cord with this model first and crop around it (default: the "
                           "catalogue's cord model for models trained on cropped scans)")
    crop.add_argument("--no-crop", action="store_true",
                      help="predict the whole field of view (default: inside the cord's box found by a fast "
                           "localizer pass, plus the margin)")
    parser.add_argument("--crop-margin", type=number(float, minimum=0, maximum=MAX_CROP_MARGIN_MM), default=None,
                        help="crop margin around the cord in mm (default 10)")
    parser.add_argument("--save-cropbox", action="store_true",
                        help="also write the crop box as <scan>_cropbox.nii.gz (as SCT does)")
    parser.add_argument("--trust", action="store_true",
                        help="trust this model folder's files (checkpoints are pickled code) and remember the decision")
    parser.add_argument("--yes", action="store_true", help="install a missing catalogue model without asking")
    parser.add_argument("--offline", action="store_true", default=None, help="never touch the network")


def add_mask_arguments(parser: argparse.ArgumentParser) -> None:
    """The mask options of the Slicer panel, with the same defaults (:class:`~.binarization.MaskOptions`)."""
    default = MaskOptions()
    parser.add_argument("--largest-cord", action=argparse.BooleanOptionalAction, default=default.keep_largest_cord,
                        help="keep only the largest connected part of the cord mask (default: on, as the "
                             "Spinal Cord Toolbox's spinalcord task)")
    parser.add_argument("--restrict-lesions", action=argparse.BooleanOptionalAction,
                        default=default.restrict_lesions_to_cord,
                        help="remove lesion voxels outside the cord mask (default: off)")


def mask_options(args: argparse.Namespace) -> MaskOptions:
    """The mask options given on the command line."""
    return MaskOptions(keep_largest_cord=args.largest_cord, restrict_lesions_to_cord=args.restrict_lesions)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``segment`` and ``demo`` commands."""
    segment = subparsers.add_parser("segment", help="segment one or more scans",
                                    description="Segment scans with an nnU-Net v2 model; write soft maps, "
                                                "masks and JSON sidecars.")
    segment.add_argument("-i", "--input", nargs="+", required=True, help="scan(s): NIfTI, NRRD, ...")
    segment.add_argument("-o", "--output", required=True, help="output folder")
    segment.add_argument("--no-soft", action="store_true", help="write only binary masks")
    segment.add_argument("--overlay", action="store_true", help="also write a PNG overlay per scan")
    add_inference_arguments(segment)
    segment.set_defaults(func=run_segment)

    demo = subparsers.add_parser("demo", help="segment the bundled sample scan with the embedded model",
                                 description="Segment the bundled sample scan; write soft maps, masks and a "
                                             "PNG overlay.")
    demo.add_argument("-o", "--output", default=DEMO_OUTPUT, help=f"output folder (default: ./{DEMO_OUTPUT})")
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help=DEVICE_HELP)
    demo.set_defaults(func=run_demo)


def _confirm_on_terminal(message: str) -> bool:
    import sys

    if not sys.stdin.isatty():
        return False
    return input(f"{message} [y/N] ").strip().lower() in ("y", "yes")


def _options(args: argparse.Namespace, orientation: Optional[str]):
    from ..inference.engine import InferenceOptions

    given = {"tile_step_size": args.step_size, "crop_margin_mm": args.crop_margin}  # None: the engine's default
    return InferenceOptions(
        device=args.device, folds=args.folds, use_mirroring=args.tta, num_threads=args.threads,
        orientation=args.orientation or orientation, crop=not args.no_crop, offline=args.offline,
        **{key: value for key, value in given.items() if value is not None},
    )


def segment_files(
    inputs: Sequence[str],
    output_dir: Path,
    engine,
    thresholds: Optional[str] = None,
    crop_mask: Optional[str] = None,
    write_soft: bool = True,
    overlay: bool = False,
    crop_engine=None,
    options: Optional[MaskOptions] = None,
    save_cropbox: bool = False,
) -> List[str]:
    """Segment each input with ``engine``; return the inputs that failed (errors are logged).

    The crop box comes from ``crop_mask`` (one file for every input) or from
    ``crop_engine``, a cord model run on each input first; else from the
    engine's own localizer (unless its options say ``crop=False``).
    ``save_cropbox`` writes each box as ``<scan>_cropbox.nii.gz``.
    """
    from tqdm import tqdm

    from ..inference.cropping import CropBox, cropbox_image
    from ..inference.engine import load_crop_mask
    from ..imaging.binarization import binary_mask_images
    from ..imaging.image_io import read_scan, write_image_atomic
    from ..imaging.naming import source_name
    from ..imaging.outputs import write_outputs
    from ..report.overlay import save_overlay_png
    from ..inference.progress import ConsoleProgress

    levels = parse_thresholds(thresholds, engine.structures)
    mask = load_crop_mask(crop_mask) if crop_mask else None
    failed = []
    with tqdm(total=len(inputs), unit="scan", desc="segmenting", leave=False, disable=None) as bar:
        for path in inputs:
            try:
                started = time.perf_counter()
                scan = read_scan(path)
                reading = time.perf_counter() - started
                if crop_engine is not None:
                    with ConsoleProgress(f"{source_name(path)}: cord for the crop") as progress:
                        mask = crop_engine.cord_mask(scan, str(path), progress=progress)
                with ConsoleProgress(source_name(path)) as progress:
                    prediction = engine.predict(scan, crop_mask=mask, name=str(path), progress=progress)
                timing = prediction.provenance.get("Timing")
                if timing is not None:
                    prediction.provenance["Timing"] = timing = {"Reading": round(reading, 3), **timing}
                started = time.perf_counter()
                written = write_outputs(prediction.soft_maps, source_name(path), output_dir, levels,
                                        prediction.provenance, write_soft=write_soft, options=options)
                if save_cropbox:  # the whole field of view when the model ran on it: the file is always there
                    box = prediction.crop_box or CropBox((0, 0, 0), tuple(scan.GetSize()), "whole field of view")
                    written["cropbox"] = write_image_atomic(cropbox_image(box, scan),
                                                            output_dir / f"{source_name(path)}_cropbox.nii.gz")
                if overlay:
                    masks = binary_mask_images(prediction.soft_maps, levels, options or MaskOptions())
                    written["overlay"] = save_overlay_png(
                        scan, masks, output_dir / f"{source_name(path)}_overlay.png", title=source_name(path),
                        provenance=dict(prediction.provenance, Thresholds=levels))
                if timing is not None:
                    timing["Writing"] = time.perf_counter() - started
                    logger.debug("%s: seconds per stage: %s", path,
                                 ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in timing.items()))
                for key, file in written.items():
                    tqdm.write(f"{path}: {key} -> {file}")
            except SpinalCordSegError as error:  # names the file and the problem already
                logger.error("%s", error)
                failed.append(str(path))
            except Exception as error:  # OSError, MemoryError, numpy...: this scan fails, the next one runs
                logger.error("%s: %s: %s", path, type(error).__name__, error)
                logger.debug("traceback of the failure on %s", path, exc_info=True)
                failed.append(str(path))
            bar.update()
    return failed


def check_options(args: argparse.Namespace) -> None:
    """Refuse bad option values before anything slow runs (SpinalCordSegError naming the option)."""
    threshold_items(args.threshold)  # the numbers' ranges are checked while parsing (arguments.number)
    if args.device not in ("auto", "cpu"):  # a missing GPU stops the run before models or folders are touched
        from ..inference.engine import select_device

        select_device(args.device)
    orientation = (args.orientation or "").upper()
    if orientation and sorted(AXIS_OF.get(letter, "?") for letter in orientation) != ["x", "y", "z"]:
        raise SpinalCordSegError(f"--orientation {args.orientation!r}: give one letter per axis "
                                 "from R/L, A/P and S/I, such as LAS or RPI")


def input_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be segmented, from its header only (no voxels read); None when usable."""
    import SimpleITK as sitk

    from ..imaging.image_io import check_image_file

    file = Path(path)
    if not file.exists():
        return f"{path}: file not found"
    if not file.is_file():
        return f"{path}: not a file"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        return f"{path}: cannot read image ({lines[-1] if lines else 'unknown format'})"
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1:
        return f"{path}: has {reader.GetNumberOfComponents()} components per voxel; a single-channel scan is needed"
    if not (len(size) == 3 or (len(size) == 4 and size[3] == 1)):
        return f"{path}: image is {len(size)}D with size {size}; a 3D scan is needed"
    try:
        check_image_file(file)  # geometry, truncation, stored NaN: before the model loads, not after
    except InputImageError as error:
        return str(error)
    return None


def prepare_output_folder(folder: Path, what: str = "the output folder") -> Optional[Path]:
    """Create ``folder`` if needed and check that files can be made there; clear stale temporaries.

    Returns the top-most folder this call created (None when ``folder`` existed).
    Raises SpinalCordSegError naming the folder (a file, no permission, a read-only or virtual file system).
    """
    import tempfile

    from ..imaging.fileutil import remove_stale_temporaries

    if folder.exists() and not folder.is_dir():
        raise SpinalCordSegError(f"{folder}: {what} exists and is not a folder")
    created = next((parent for parent in reversed([folder, *folder.parents]) if not parent.exists()), None)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise SpinalCordSegError(f"{folder}: cannot write to {what} ({error.strerror or error})") from error
    remove_stale_temporaries(folder)
    return created


@contextmanager
def output_folder(folder: Path) -> Iterator[Path]:
    """:func:`prepare_output_folder`, and on the way out remove the folders it created if they are still empty.

    A run where every input failed (or the model could not load) leaves nothing behind; a folder that
    holds anything, or that existed before, is kept.

    Example:
        >>> with output_folder(Path("out")) as folder:  # doctest: +SKIP
        ...     segment_files(["t2.nii.gz"], folder, engine)
    """
    created = prepare_output_folder(folder)
    try:
        yield folder
    finally:
        path = folder
        while created is not None:
            try:
                path.rmdir()  # only an empty folder goes
            except OSError:
                break
            if path == created:
                break
            path = path.parent


def resolve_models(args: argparse.Namespace):
    """(model, crop model or None) for the inference arguments; may ask to install or trust; loads nothing.

    The model folder's files, the thresholds and the folds are checked here, before anything slow.
    """
    from ..models.model_folder import ModelFolder
    from ..models.model_store import resolve_model

    confirm = (lambda message: True) if args.yes else _confirm_on_terminal
    resolved = resolve_model(args.model, trust=args.trust, offline=args.offline, confirm=confirm)
    crop_model = None if args.no_crop else args.crop_with or (None if args.crop_mask else resolved.crop_with)
    cord = resolve_model(crop_model, trust=args.trust, offline=args.offline, confirm=confirm) if crop_model else None
    model = ModelFolder.open(resolved.folder)
    parse_thresholds(args.threshold, model.structures)
    model.select_folds(args.folds)
    return resolved, cord


def load_engines(args: argparse.Namespace, resolved, cord):
    """(engine, crop engine or None) for models from :func:`resolve_models` (the slow part)."""
    from ..inference.engine import SegmentationEngine

    engine = SegmentationEngine(resolved.folder, _options(args, resolved.orientation), model_id=resolved.model_id)
    crop_engine = None
    if cord is not None and Path(cord.folder) == Path(resolved.folder):
        crop_engine = engine  # the same model crops for itself: loaded once, its demo note said once
    elif cord is not None:
        crop_engine = SegmentationEngine(cord.folder, _options(args, cord.orientation), model_id=cord.model_id)
    return engine, crop_engine


def engines_from_arguments(args: argparse.Namespace):
    """(engine, crop engine or None) for the inference arguments; may ask to install or trust a model."""
    check_options(args)
    return load_engines(args, *resolve_models(args))


def run_segment(args: argparse.Namespace) -> int:
    """Check inputs, options and the output folder; then load the model and segment each usable scan."""
    from ..imaging.naming import refuse_name_collisions, source_name

    check_options(args)
    given_twice = sorted({path for path in args.input if args.input.count(path) > 1})
    if given_twice:
        raise SpinalCordSegError(f"input(s) given more than once (nothing was run): {', '.join(given_twice)}")
    refuse_name_collisions({path: source_name(path) for path in args.input})
    problems = {path: input_problem(path) for path in args.input}
    crop_mask_problem = input_problem(args.crop_mask) if args.crop_mask else None
    if crop_mask_problem:
        raise SpinalCordSegError(f"--crop-mask {crop_mask_problem}")
    for problem in filter(None, problems.values()):
        logger.error("%s", problem)
    usable = [path for path, problem in problems.items() if problem is None]
    if not usable:
        raise SpinalCordSegError(f"none of the {len(args.input)} input(s) can be segmented; nothing was run")
    resolved, cord = resolve_models(args)
    with output_folder(Path(args.output)) as output:
        engine, crop_engine = load_engines(args, resolved, cord)
        if args.no_tta:
            logger.warning("--no-tta is deprecated: test-time mirroring is off by default (--tta turns it on)")
        failed = [path for path in args.input if problems[path]]
        failed += segment_files(usable, output, engine, args.threshold, args.crop_mask,
                                write_soft=not args.no_soft, overlay=args.overlay, crop_engine=crop_engine,
                                options=mask_options(args), save_cropbox=args.save_cropbox)
    if failed:
        logger.error("%d of %d scan(s) failed: %s", len(failed), len(args.input), ", ".join(failed))
        return 1
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from ..inference.engine import InferenceOptions, SegmentationEngine
    from ..resources import sample_scan_path

    from ..models.model_store import resolve_model

    model = resolve_model(DEMO_MODEL, offline=True)  # embedded and pinned: no download, no question
    with output_folder(Path(args.output).resolve()) as output:
        engine = SegmentationEngine(model.folder, InferenceOptions(device=args.device, orientation=model.orientation),
                                    model_id=model.model_id)
        failed = segment_files([str(sample_scan_path())], output, engine, overlay=True)
    if failed:
        return 1
    print(f"SpinalCordSeg demo: soft maps, masks and a PNG overlay written to {output}")
    return 0
