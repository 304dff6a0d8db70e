"""Generate small nnU-Net v2 results folders with random weights.

The folders have nnU-Net's real layout (``dataset.json``, ``plans.json``,
``fold_N/checkpoint_final.pth``) and load with nnU-Net's own
``nnUNetPredictor``. Tests use them where a trained model is not needed, and
the benchmark uses one the size of the field's cord model for timings.

Example:
    >>> from SpinalCordSegLib.models.synthetic_model import make_synthetic_model
    >>> folder = make_synthetic_model("/tmp/models", region_based=True)  # doctest: +SKIP
    >>> sorted(p.name for p in folder.iterdir())  # doctest: +SKIP
    ['dataset.json', 'fold_0', 'plans.json']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

TRAINER = "nnUNetTrainer"
PLANS = "nnUNetPlans"
CONFIGURATION = "3d_fullres"

PLAIN_LABELS: Dict[str, object] = {"background": 0, "sc": 1}
REGION_LABELS: Dict[str, object] = {"background": 0, "sc": [1, 2], "lesion": 2}


def _plans(
    dataset_name: str,
    patch_size: Sequence[int],
    spacing: Sequence[float],
    features: Sequence[int],
) -> dict:
    """Return a ``plans.json`` dictionary for a plain 3D U-Net."""
    n_stages = len(features)
    strides = [[1, 1, 1]] + [
        [2 if patch_size[axis] // 2 ** (stage + 1) >= 4 else 1 for axis in range(3)]
        for stage in range(n_stages - 1)
    ]
    configuration = {
        "data_identifier": f"{PLANS}_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch_size),
        "median_image_size_in_voxels": list(patch_size),
        "spacing": list(spacing),
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None,
        },
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n_stages,
                "features_per_stage": list(features),
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * n_stages,
                "strides": strides,
                "n_conv_per_stage": [2] * n_stages,
                "n_conv_per_stage_decoder": [2] * (n_stages - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }
    return {
        "dataset_name": dataset_name,
        "plans_name": PLANS,
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": list(patch_size),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": {"max": 1000.0, "mean": 300.0, "median": 300.0, "min": 0.0,
                  "percentile_00_5": 10.0, "percentile_99_5": 900.0, "std": 100.0},
        },
    }


def make_synthetic_model(
    root: Union[str, Path],
    region_based: bool = False,
    *,
    folds: Sequence[int] = (0,),
    patch_size: Sequence[int] = (16, 32, 32),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    features: Sequence[int] = (4, 8, 16),
    image_orientation: Optional[str] = None,
    seed: int = 0,
    dataset_name: Optional[str] = None,
) -> Path:
    """Write an nnU-Net v2 results folder with random weights; return its path.

    The folder is ``root/<dataset>/nnUNetTrainer__nnUNetPlans__3d_fullres``.
    ``patch_size`` and ``spacing`` are in nnU-Net's (SimpleITK array) axis
    order, z y x. ``image_orientation`` (e.g. ``"RPI"``) is written to
    ``dataset.json`` when given, the way the field's models record it.
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = dataset_name or ("Dataset901_SyntheticRegions" if region_based else "Dataset900_SyntheticCord")
    labels = REGION_LABELS if region_based else PLAIN_LABELS
    dataset = {
        "channel_names": {"0": "T2w"},
        "labels": labels,
        "numTraining": 0,
        "file_ending": ".nii.gz",
        "name": name,
    }
    if region_based:
        dataset["regions_class_order"] = [1, 2]
    if image_orientation:
        dataset["image_orientation"] = image_orientation
    plans = _plans(name, patch_size, spacing, features)

    folder = Path(root) / name / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))

    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration(CONFIGURATION)
    n_outputs = plans_manager.get_label_manager(dataset).num_segmentation_heads
    for fold in folds:
        torch.manual_seed(seed + fold)
        network = nnUNetTrainer.build_network_architecture(
            plans_manager, configuration, 1, n_outputs, enable_deep_supervision=False
        )
        checkpoint = {
            "network_weights": network.state_dict(),
            "init_args": {"plans": plans, "configuration": CONFIGURATION, "fold": fold,
                          "dataset_json": dataset},
            "trainer_name": TRAINER,
            "inference_allowed_mirroring_axes": (0, 1, 2),
            "current_epoch": 0,
        }
        fold_dir = folder / f"fold_{fold}"
        fold_dir.mkdir(exist_ok=True)
        torch.save(checkpoint, fold_dir / "checkpoint_final.pth")
    return folder
