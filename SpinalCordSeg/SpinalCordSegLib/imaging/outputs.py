"""Writing a prediction: soft maps and binary masks, each with its JSON provenance sidecar.

The masks follow the one binarization rule (:mod:`.binarization`), the files
are named as the field names them (:mod:`.naming`), and each sidecar records
the automatic step, the threshold and the mask options (:mod:`.sidecar`).

Example:
    >>> from SpinalCordSegLib.imaging.outputs import write_outputs
    >>> written = write_outputs(prediction.soft_maps, "sub-01_T2w", "out", {"sc": 0.5},
    ...                         prediction.provenance)  # doctest: +SKIP
    >>> sorted(written)  # doctest: +SKIP
    ['sc_probseg', 'sc_seg']
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import SimpleITK as sitk

from .binarization import MaskOptions, binary_mask_images
from .image_io import write_image_atomic
from .naming import output_name
from .sidecar import Sidecar, automatic_step


def write_outputs(
    soft_maps: Mapping[str, sitk.Image],
    source: str,
    output_dir: Union[str, Path],
    thresholds: Mapping[str, float],
    provenance: dict,
    write_soft: bool = True,
    options: Optional[MaskOptions] = None,
) -> Dict[str, Path]:
    """Write soft maps and binary masks with sidecars; return ``{file key: path}``.

    Keys are ``"<structure>_probseg"`` and ``"<structure>_seg"``. ``provenance``
    is the automatic step's ``GeneratedBy`` entry; the thresholds and mask
    options (default: the field's, :class:`~.binarization.MaskOptions`) are added.
    """
    output_dir = Path(output_dir)
    options = options if options is not None else MaskOptions()
    step = automatic_step(provenance, {k: thresholds[k] for k in soft_maps})
    masks = binary_mask_images(soft_maps, thresholds, options)
    started = time.perf_counter()
    images: Dict[str, Path] = {}
    for structure, soft in soft_maps.items():
        if write_soft:
            images[f"{structure}_probseg"] = write_image_atomic(
                soft, output_dir / output_name(source, structure, "probseg"))
        images[f"{structure}_seg"] = write_image_atomic(masks[structure],
                                                        output_dir / output_name(source, structure, "seg"))
    if isinstance(provenance.get("Timing"), dict):  # the engine's stages, and now the images' writing
        step["Timing"] = dict(provenance["Timing"], Writing=round(time.perf_counter() - started, 3))
    written: Dict[str, Path] = {}
    for structure in soft_maps:
        if write_soft:
            Sidecar([step], structure=structure).write(images[f"{structure}_probseg"])
            written[f"{structure}_probseg"] = images[f"{structure}_probseg"]
        Sidecar([step], structure=structure, threshold=float(thresholds[structure]),
                mask_options=options).write(images[f"{structure}_seg"])
        written[f"{structure}_seg"] = images[f"{structure}_seg"]
    return written
