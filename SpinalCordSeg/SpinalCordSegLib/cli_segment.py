"""``spinalcordseg segment`` and ``spinalcordseg demo``.

Example:
    $ spinalcordseg segment -i sub-01_T2w.nii.gz sub-02_T2w.nii.gz -m demo-sc-lesion -o out/ --threshold lesion=0.3
    $ spinalcordseg demo
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .errors import SpinalCordSegError

logger = logging.getLogger(__name__)

DEMO_MODEL = "demo-sc-lesion"
DEMO_OUTPUT = "spinalcordseg-demo-output"


def parse_thresholds(text: Optional[str], structures: Sequence[str], default: float = 0.5) -> Dict[str, float]:
    """Parse ``"sc=0.5,lesion=0.3"`` (or one number for all) into a threshold per structure.

    >>> parse_thresholds("lesion=0.3", ["sc", "lesion"])
    {'sc': 0.5, 'lesion': 0.3}
    """
    thresholds = {s: default for s in structures}
    if not text:
        return thresholds
    for item in text.split(","):
        name, _, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise SpinalCordSegError(f"--threshold: {item!r} is not NAME=VALUE or a number") from None
        if not 0.0 < number < 1.0:
            raise SpinalCordSegError(f"--threshold: {item!r}: the value must be between 0 and 1")
        if not name:
            thresholds = {s: number for s in structures}
        elif name not in thresholds:
            raise SpinalCordSegError(f"--threshold: unknown structure {name!r}; the model has {list(structures)}")
        else:
            thresholds[name] = number
    return thresholds


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs a model."""
    parser.add_argument("-m", "--model", required=True,
                        help="catalogue id (see 'spinalcordseg models list'), model folder or zip")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="where to run (default: auto = CUDA, then MPS, then CPU)")
    parser.add_argument("--folds", nargs="+", help="folds to ensemble (default: all present)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation by mirroring (off by default: about 8x slower)")
    parser.add_argument("--no-tta", action="store_true", help="deprecated: mirroring is off by default")
    parser.add_argument("--step-size", type=float, default=0.5, help="sliding-window step, fraction of a patch")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    parser.add_argument("--threshold", help="binarization threshold(s): 0.5, or sc=0.5,lesion=0.3")
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
    parser.add_argument("--crop-margin", type=float, default=20.0, help="crop margin in mm (default 20)")
    parser.add_argument("--save-cropbox", action="store_true",
                        help="also write the crop box as <scan>_cropbox.nii.gz (as SCT does)")
    parser.add_argument("--trust", action="store_true",
                        help="trust this model's checkpoints (pickled code) and remember the decision")
    parser.add_argument("--yes", action="store_true", help="install a missing catalogue model without asking")
    parser.add_argument("--offline", action="store_true", default=None, help="never touch the network")


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
    demo.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    demo.set_defaults(func=run_demo)


def _confirm_on_terminal(message: str) -> bool:
    import sys

    if not sys.stdin.isatty():
        return False
    return input(f"{message} [y/N] ").strip().lower() in ("y", "yes")


def _options(args: argparse.Namespace, orientation: Optional[str]):
    from .engine import InferenceOptions

    return InferenceOptions(
        device=args.device, folds=args.folds, use_mirroring=args.tta, tile_step_size=args.step_size,
        num_threads=args.threads, orientation=args.orientation or orientation, crop_margin_mm=args.crop_margin,
        crop=not args.no_crop, offline=args.offline,
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
    save_cropbox: bool = False,
) -> List[str]:
    """Segment each input with ``engine``; return the inputs that failed (errors are logged).

    The crop box comes from ``crop_mask`` (one file for every input) or from
    ``crop_engine``, a cord model run on each input first; else from the
    engine's own localizer (unless its options say ``crop=False``).
    ``save_cropbox`` writes each box as ``<scan>_cropbox.nii.gz``.
    """
    from tqdm import tqdm

    from .cropping import cropbox_image
    from .engine import load_crop_mask
    from .image_io import read_scan, write_image_atomic
    from .outputs import binarize, source_name, write_outputs
    from .overlay import save_overlay_png
    from .progress import ConsoleProgress

    levels = parse_thresholds(thresholds, engine.structures)
    mask = load_crop_mask(crop_mask) if crop_mask else None
    failed = []
    with tqdm(total=len(inputs), unit="scan", desc="segmenting", leave=False, disable=None) as bar:
        for path in inputs:
            try:
                scan = read_scan(path)
                if crop_engine is not None:
                    mask = crop_engine.cord_mask(scan, str(path))
                with ConsoleProgress(source_name(path)) as progress:
                    prediction = engine.predict(scan, crop_mask=mask, name=str(path), progress=progress)
                written = write_outputs(prediction.soft_maps, source_name(path), output_dir, levels,
                                        prediction.provenance, write_soft=write_soft)
                if save_cropbox and prediction.crop_box is not None:
                    written["cropbox"] = write_image_atomic(cropbox_image(prediction.crop_box, scan),
                                                            output_dir / f"{source_name(path)}_cropbox.nii.gz")
                if overlay:
                    masks = {k: binarize(v, levels[k]) for k, v in prediction.soft_maps.items()}
                    written["overlay"] = save_overlay_png(
                        scan, masks, output_dir / f"{source_name(path)}_overlay.png", title=source_name(path))
                for key, file in written.items():
                    tqdm.write(f"{path}: {key} -> {file}")
            except SpinalCordSegError as error:
                logger.error("%s", error)
                failed.append(str(path))
            bar.update()
    return failed


def engines_from_arguments(args: argparse.Namespace):
    """(engine, crop engine or None) for the inference arguments; may ask to install or trust a model."""
    from .engine import SegmentationEngine
    from .model_store import resolve_model

    confirm = (lambda message: True) if args.yes else _confirm_on_terminal
    resolved = resolve_model(args.model, trust=args.trust, offline=args.offline, confirm=confirm)
    engine = SegmentationEngine(resolved.folder, _options(args, resolved.orientation), model_id=resolved.model_id)
    crop_engine = None
    crop_model = None if args.no_crop else args.crop_with or (None if args.crop_mask else resolved.crop_with)
    if crop_model:
        cord = resolve_model(crop_model, trust=args.trust, offline=args.offline, confirm=confirm)
        crop_engine = SegmentationEngine(cord.folder, _options(args, cord.orientation), model_id=cord.model_id)
    return engine, crop_engine


def run_segment(args: argparse.Namespace) -> int:
    engine, crop_engine = engines_from_arguments(args)
    if args.no_tta:
        logger.warning("--no-tta is deprecated: test-time mirroring is off by default (--tta turns it on)")
    failed = segment_files(args.input, Path(args.output), engine, args.threshold, args.crop_mask,
                           write_soft=not args.no_soft, overlay=args.overlay, crop_engine=crop_engine,
                           save_cropbox=args.save_cropbox)
    if failed:
        logger.error("%d of %d scan(s) failed: %s", len(failed), len(args.input), ", ".join(failed))
        return 1
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from .engine import InferenceOptions, SegmentationEngine
    from .resources import sample_scan_path

    from .model_store import resolve_model

    model = resolve_model(DEMO_MODEL, offline=True)  # embedded and pinned: no download, no question
    engine = SegmentationEngine(model.folder, InferenceOptions(device=args.device, orientation=model.orientation),
                                model_id=model.model_id)
    output = Path(args.output).resolve()
    failed = segment_files([str(sample_scan_path())], output, engine, overlay=True)
    if failed:
        return 1
    print(f"SpinalCordSeg demo: soft maps, masks and a PNG overlay written to {output}")
    return 0
