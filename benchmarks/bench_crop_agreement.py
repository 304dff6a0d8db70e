"""Agreement: the default cropped pipeline against the whole field of view, on every shared scan with a cord mask.

For each embedded model and each scan, the cord (``sc``) mask at 0.5 of
the default run (the whole field's tiles around the localizer's box, see
``inference/tiles.py``) and of ``crop=False`` (the whole field of view):

- their Dice inside the box (the cord plus its margin; goal >= 0.98) and
  over the whole scan;
- the whole field's cord voxels outside the box, and how many of them the
  scan's manual cord mask holds (goal 0: the crop never loses cord);
- each one's Dice against the manual mask (the cropped one should be no lower).

Dice is ``correction.correction_stats``'s, as in the embedded models' report.

    .venv/bin/python benchmarks/bench_crop_agreement.py [--data ../shared/data] [--json out.json]
        [--models demo-sc-lesion] [--only /]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ("demo-sc", "demo-sc-lesion")


def cases(data: Path):
    """(name, scan, cord mask) of every shared scan that has a cord mask."""
    testing = data / "sct_testing_data"
    for scan, mask in (("t2/t2", "t2/t2_seg-manual"), ("t2/t2_fake_lesion", "t2/t2_fake_lesion_sc_seg"),
                       ("t1/t1w", "t1/t1w_seg-manual"), ("t2s/t2s", "t2s/t2s_seg-deepseg"), ("mt/mt1", "mt/mt1_seg")):
        yield scan, testing / f"{scan}.nii.gz", testing / f"{mask}.nii.gz"
    train = data / "train"
    for mask in sorted((train / "gm-challenge-data/derivatives/labels").glob("sub-*/anat/*_seg-manual.nii.gz")):
        subject = mask.parts[-3]
        yield subject, train / "gm-challenge-data" / subject / "anat" / mask.name.replace("_seg-manual", ""), mask
    leipzig = train / "fmri-segmentation/data_leipzig_rest/derivatives"
    yield ("leipzigR01_bold", leipzig / "moco/sub-leipzigR01/func/sub-leipzigR01_task-rest_desc-mocomean_bold.nii.gz",
           leipzig / "label/sub-leipzigR01/func/sub-leipzigR01_task-rest_desc-spinalcord_mask.nii.gz")
    yield "AMU7T", train / "template_AMU7T/code/image.nii.gz", train / "template_AMU7T/code/image_sc.nii.gz"
    extra = train / "sct_testing_data_extra"
    yield "mt0", extra / "mt/mt0.nii.gz", extra / "mt/mt0_seg.nii.gz"
    yield ("PAM50_t2", extra / "template/template/PAM50_small_t2.nii.gz",
           extra / "template/template/PAM50_small_cord.nii.gz")
    errsm = data / "sct_history_errsm/errsm_11"
    yield "errsm_11", errsm / "t2.nii.gz", errsm / "t2_manual_segmentation.nii.gz"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared/data"))
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="embedded models to run")
    parser.add_argument("--only", help="only scans whose name contains this (e.g. '/' for sct_testing_data)")
    args = parser.parse_args()

    import numpy as np
    import SimpleITK as sitk

    from SpinalCordSegLib.inference.cropping import cropbox_image
    from SpinalCordSegLib.rounds.correction import correction_stats
    from SpinalCordSegLib.inference.engine import InferenceOptions, SegmentationEngine
    from SpinalCordSegLib.imaging.image_io import read_scan
    from SpinalCordSegLib.models.model_store import resolve_model

    print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)
    rows = []
    for model_id in args.models:
        model = resolve_model(model_id, offline=True)
        engines = {crop: SegmentationEngine(model.folder, InferenceOptions(device="cpu", crop=crop,
                                                                           orientation=model.orientation),
                                            model_id=model_id) for crop in (True, False)}
        for name, scan_path, mask_path in cases(Path(args.data)):
            if not scan_path.is_file() or (args.only and args.only not in name):
                continue
            scan = read_scan(scan_path)
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0
            masks, seconds, box, prediction_record = {}, {}, None, None
            for crop, engine in engines.items():
                start = time.perf_counter()
                prediction = engine.predict(scan, name=str(scan_path))
                seconds[crop] = time.perf_counter() - start
                masks[crop] = sitk.GetArrayFromImage(prediction.soft_maps["sc"]) >= 0.5
                box = prediction.crop_box if crop else box
                prediction_record = prediction.provenance["Crop"] if crop else prediction_record
            inside = (sitk.GetArrayFromImage(cropbox_image(box, scan)) > 0) if box else np.ones_like(truth)
            outside = masks[False] & ~inside
            row = {"model": model_id, "scan": name, "size": list(scan.GetSize()),
                   "box": box.to_dict() if box else None, "crop": prediction_record,
                   "dice_cropped_vs_whole": correction_stats(masks[True], masks[False]).dice,
                   "dice_in_box": correction_stats(masks[True] & inside, masks[False] & inside).dice,
                   "whole_outside_box": int(outside.sum()), "whole_outside_box_in_mask": int((outside & truth).sum()),
                   "dice_cropped_vs_mask": correction_stats(masks[True], truth).dice,
                   "dice_whole_vs_mask": correction_stats(masks[False], truth).dice,
                   "seconds_cropped": seconds[True], "seconds_whole": seconds[False]}
            rows.append(row)
            print(f"{model_id:>15} {name:>18} {str(row['size']):>16}  in box {row['dice_in_box']:.4f}"
                  f" all {row['dice_cropped_vs_whole']:.4f}  whole outside box {row['whole_outside_box']:5d}"
                  f" (in mask {row['whole_outside_box_in_mask']})  vs mask: cropped {row['dice_cropped_vs_mask']:.3f}"
                  f" whole {row['dice_whole_vs_mask']:.3f}  box {'whole FOV' if box is None else box.size}"
                  f" tiles {row['crop'].get('Tiles', 'all')}  {row['crop']['Source']}"
                  f"{' grown ' + str(row['crop']['Grown']) if 'Grown' in row['crop'] else ''}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    worst = min(r["dice_in_box"] for r in rows)
    lost = sum(r["whole_outside_box_in_mask"] for r in rows)
    lower = [f"{r['model']} {r['scan']}" for r in rows if r["dice_cropped_vs_mask"] < r["dice_whole_vs_mask"]]
    print(f"lowest cropped/whole Dice in the box {worst:.4f} (goal >= 0.98); whole-field cord voxels outside the box "
          f"that the manual masks hold: {lost} (goal 0); cropped below whole against the mask: {', '.join(lower) or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
