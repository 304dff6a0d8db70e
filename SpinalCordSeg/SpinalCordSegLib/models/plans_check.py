"""Check an nnU-Net results folder's ``plans.json`` and ``dataset.json`` before nnU-Net reads them.

nnU-Net builds the network by importing and calling the dotted names that
``plans.json`` gives (``pydoc.locate`` of ``network_class_name`` and of each
``arch_kwargs`` entry listed in ``_kw_requires_import``), and looks up other
names (preprocessor, resampling functions, normalization schemes, reader,
label manager) as attributes of nnU-Net's own modules. A plans file is
therefore code: every such name must be on the allow-lists below, whether the
model is trusted or not. The fields that inference reads are checked too, so
that a damaged file is reported naming the file and the field instead of
failing later inside nnU-Net or numpy.

Example:
    >>> from SpinalCordSegLib.models.plans_check import check_plans
    >>> check_plans({"configurations": {}}, "plans.json", "3d_fullres", 1)
    Traceback (most recent call last):
    ...
    SpinalCordSegLib.errors.ModelFolderError: plans.json: 'configurations' is empty
"""

from __future__ import annotations

import numbers
from pathlib import PurePath
from typing import Dict, Iterable, List, Mapping, Optional

from ..errors import ModelFolderError
from ..imaging.naming import is_orientation_code, is_safe_id

# Segmentation networks of dynamic_network_architectures (module under .architectures, class).
_NETWORK_MODULE = "dynamic_network_architectures.architectures."
NETWORK_CLASSES = frozenset(
    [("unet", name) for name in ("PlainConvUNet", "ResidualEncoderUNet", "ResidualUNet")]
    + [("primus", name) for name in (
        "Primus", "PrimusX", "PrimusS", "PrimusB", "PrimusM", "PrimusL",
        "PrimusV2", "PrimusV2X", "PrimusV2S", "PrimusV2B", "PrimusV2M", "PrimusV2L",
        "PrimusV3", "PrimusV3X", "PrimusV3S", "PrimusV3B", "PrimusV3M", "PrimusV3L",
    )]
)
# torch.nn building blocks that nnU-Net plans pass as conv_op, norm_op, dropout_op and nonlin,
# by the torch.nn.modules submodule that defines them (reachable as torch.nn.X or torch.nn.modules.<module>.X).
TORCH_BLOCKS: Dict[str, tuple] = {
    "conv": ("Conv1d", "Conv2d", "Conv3d"),
    "instancenorm": ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"),
    "batchnorm": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
    "normalization": ("GroupNorm", "LayerNorm"),
    "dropout": ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout"),
    "activation": ("ReLU", "LeakyReLU", "PReLU", "ELU", "SELU", "GELU", "SiLU", "Mish", "Tanh", "Sigmoid",
                   "Hardswish"),
}
# Residual blocks of dynamic_network_architectures that some plans pass as 'block'.
DNA_BLOCKS = frozenset(
    f"dynamic_network_architectures.building_blocks.residual.{name}" for name in ("BasicBlockD", "BottleneckD")
)
IMPORTABLE_BLOCKS = frozenset(
    [f"torch.nn.{name}" for names in TORCH_BLOCKS.values() for name in names]
    + [f"torch.nn.modules.{module}.{name}" for module, names in TORCH_BLOCKS.items() for name in names]
) | DNA_BLOCKS
# Names nnU-Net finds by attribute lookup in its own packages (nnunetv2 2.x).
PREPROCESSORS = frozenset({"DefaultPreprocessor"})
RESAMPLING_FUNCTIONS = frozenset({
    "resample_data_or_seg_to_shape", "resample_data_or_seg_to_spacing", "resample_torch_fornnunet",
    "resample_torch_simple", "no_resampling_hack",
})
NORMALIZATION_SCHEMES = frozenset({
    "ZScoreNormalization", "CTNormalization", "NoNormalization", "RescaleTo01Normalization", "RGBTo01Normalization",
})
READER_WRITERS = frozenset({
    "SimpleITKIO", "SimpleITKIOWithReorient", "NibabelIO", "NibabelIOWithReorient", "NaturalImage2DIO", "Tiff3DIO",
})
LABEL_MANAGERS = frozenset({"LabelManager"})
OLD_FORMAT_NETWORKS = frozenset({"PlainConvUNet", "ResidualEncoderUNet"})  # nnU-Net's own conversion table

# Fields of a configuration that inference reads, and checks of their values.
_RESAMPLING_KEYS = ("resampling_fn_data", "resampling_fn_seg", "resampling_fn_probabilities")
_REQUIRED = ("patch_size", "spacing", "normalization_schemes", "use_mask_for_norm", "preprocessor_name",
             "resampling_fn_data", "resampling_fn_probabilities")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class _Checker:
    """Raise ModelFolderError naming the file and the field."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, problem: str, value: object = None, show: bool = True) -> None:
        shown = f" (found {value!r:.120})" if show else ""
        raise ModelFolderError(f"{self.where}: '{field}' {problem}{shown}")

    def require_name(self, field: str, value: object, allowed: Iterable[str], what: str) -> None:
        if not isinstance(value, str) or value not in allowed:
            raise ModelFolderError(
                f"{self.where}: '{field}' = {value!r:.200} is not on SpinalCordSeg's allow-list of {what}; "
                "nnU-Net would import and call this name, so the model is refused (trusted or not). "
                f"Allowed: {_some(allowed)}"
            )

    def int_list(self, field: str, value: object, positive: bool, lengths=(2, 3)) -> List[int]:
        if not isinstance(value, list) or len(value) not in lengths or not all(_is_int(v) for v in value) \
                or (positive and not all(v > 0 for v in value)):
            kind = "positive integers" if positive else "integers"
            self.fail(field, f"must be a list of {' or '.join(map(str, lengths))} {kind}", value)
        return value  # type: ignore[return-value]


def _some(names: Iterable[str], shown: int = 6) -> str:
    names = sorted(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _network_class_allowed(name: object) -> bool:
    if not isinstance(name, str) or not name.startswith(_NETWORK_MODULE):
        return False
    module, _, cls = name[len(_NETWORK_MODULE):].rpartition(".")
    return (module, cls) in NETWORK_CLASSES


def _resolve(configurations: Mapping[str, object], name: str, check: _Checker) -> dict:
    """The configuration ``name`` with its ``inherits_from`` parents merged in, as nnU-Net does."""
    chain: List[str] = []
    merged: dict = {}
    while True:
        if name in chain:
            check.fail(f"configurations.{chain[0]}.inherits_from", "forms a cycle", " -> ".join(chain + [name]))
        chain.append(name)
        configuration = configurations.get(name)
        if not isinstance(configuration, dict):
            check.fail(f"configurations.{name}", "must be a JSON object", configuration)
        merged = {**configuration, **merged}  # the child's keys win
        parent = configuration.get("inherits_from")
        if parent is None:
            return merged
        if parent not in configurations:
            check.fail(f"configurations.{name}.inherits_from", "names no configuration of this file", parent)
        name = parent


def _check_architecture(config: dict, field: str, check: _Checker) -> None:
    if "architecture" not in config:
        # nnU-Net's old plans format: the class comes from a fixed table.
        check.require_name(f"{field}.UNet_class_name", config.get("UNet_class_name"), OLD_FORMAT_NETWORKS,
                           "network classes")
        return
    architecture = config["architecture"]
    if not isinstance(architecture, dict):
        check.fail(f"{field}.architecture", "must be a JSON object", architecture)
    name = architecture.get("network_class_name")
    if not _network_class_allowed(name):
        allowed = sorted(f"{_NETWORK_MODULE}{module}.{cls}" for module, cls in NETWORK_CLASSES)
        check.require_name(f"{field}.architecture.network_class_name", name, allowed,
                           "dynamic_network_architectures network classes")
    kwargs = architecture.get("arch_kwargs")
    if not isinstance(kwargs, dict):
        check.fail(f"{field}.architecture.arch_kwargs", "must be a JSON object", kwargs)
    imports = architecture.get("_kw_requires_import", [])
    if not isinstance(imports, list) or not all(isinstance(key, str) for key in imports):
        check.fail(f"{field}.architecture._kw_requires_import", "must be a list of arch_kwargs keys", imports)
    for key in imports:
        if key not in kwargs:
            check.fail(f"{field}.architecture._kw_requires_import", f"lists '{key}', which arch_kwargs lacks",
                       show=False)
        if kwargs[key] is not None:
            check.require_name(f"{field}.architecture.arch_kwargs.{key}", kwargs[key], IMPORTABLE_BLOCKS,
                               "torch.nn and dynamic_network_architectures building blocks")


def _check_configuration(config: dict, field: str, channels: int, required: bool, check: _Checker) -> None:
    missing = [key for key in _REQUIRED if key not in config]
    if required and missing:
        check.fail(f"{field}", f"lacks {', '.join(missing)}", show=False)
    _check_architecture(config, field, check)
    if "patch_size" in config:
        patch = check.int_list(f"{field}.patch_size", config["patch_size"], positive=True)
        spacing = config.get("spacing")
        if not isinstance(spacing, list) or len(spacing) != len(patch) or \
                not all(_is_number(v) and v > 0 for v in spacing):
            check.fail(f"{field}.spacing", f"must be a list of {len(patch)} positive numbers (one per patch axis)",
                       spacing)
    for key, allowed, what in (("normalization_schemes", NORMALIZATION_SCHEMES, "normalization schemes"),
                               ("use_mask_for_norm", None, None)):
        if key not in config:
            continue
        value = config[key]
        if not isinstance(value, list) or len(value) != channels:
            check.fail(f"{field}.{key}", f"must be a list with one entry per input channel ({channels})", value)
        for index, item in enumerate(value):
            if allowed is None:
                if not isinstance(item, bool):
                    check.fail(f"{field}.{key}", "must hold true or false", value)
            else:
                check.require_name(f"{field}.{key}[{index}]", item, allowed, what)
    if "preprocessor_name" in config:
        check.require_name(f"{field}.preprocessor_name", config["preprocessor_name"], PREPROCESSORS,
                           "nnU-Net preprocessors")
    for key in _RESAMPLING_KEYS:
        if key in config:
            check.require_name(f"{field}.{key}", config[key], RESAMPLING_FUNCTIONS, "nnU-Net resampling functions")
        kwargs = config.get(f"{key}_kwargs", {})
        if not isinstance(kwargs, dict):
            check.fail(f"{field}.{key}_kwargs", "must be a JSON object", kwargs)


def check_plans(plans: dict, where: str, configuration: str, channels: int) -> None:
    """Check ``plans`` (parsed ``plans.json``; ``where`` names it in messages).

    ``configuration`` is the one SpinalCordSeg runs (from the folder name): it
    must have every field inference reads. Every configuration's importable
    names are checked, since a checkpoint may name another one.
    """
    check = _Checker(where)
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict):
        check.fail("configurations", "must be a JSON object", configurations)
    if not configurations:
        raise ModelFolderError(f"{where}: 'configurations' is empty")
    if configuration not in configurations:
        folder = PurePath(where).parent.name
        raise ModelFolderError(
            f"{where}: no configuration '{configuration}'; it has {sorted(configurations)}. SpinalCordSeg reads "
            f"the configuration from the results folder's name, which must keep nnU-Net's "
            f"<Trainer>__<Plans>__<configuration> form (such as nnUNetTrainer__nnUNetPlans__3d_fullres); "
            f"this folder is named '{folder}'"
        )
    for name in configurations:
        _check_configuration(_resolve(configurations, name, check), f"configurations.{name}", channels,
                             name == configuration, check)
    if "image_reader_writer" in plans:
        check.require_name("image_reader_writer", plans["image_reader_writer"], READER_WRITERS,
                           "nnU-Net image readers")
    if "label_manager" in plans:
        check.require_name("label_manager", plans["label_manager"], LABEL_MANAGERS, "nnU-Net label managers")
    for key in ("transpose_forward", "transpose_backward"):
        value = plans.get(key)
        if value is None:
            check.fail(key, "is missing", show=False)
        if sorted(check.int_list(key, value, positive=False, lengths=(3,))) != [0, 1, 2]:
            check.fail(key, "must be a permutation of [0, 1, 2]", value)
    properties = plans.get("foreground_intensity_properties_per_channel",
                           plans.get("foreground_intensity_properties_by_modality", {}))
    if not isinstance(properties, dict):
        check.fail("foreground_intensity_properties_per_channel", "must be a JSON object", properties)


def _label_values(value: object) -> Optional[List[int]]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(_is_int(v) and v >= 0 for v in values):
        return None
    return values  # type: ignore[return-value]


def check_dataset(dataset: dict, where: str) -> None:
    """Check ``dataset`` (parsed ``dataset.json``): labels, regions, channels, orientation."""
    check = _Checker(where)
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        check.fail("labels", "must be a non-empty mapping of name to value", labels)
    for name, value in labels.items():
        if not is_safe_id(name):  # a structure's name goes into output file names
            check.fail(f"labels.{name!r:.60}", "is not a structure name: use letters, digits, '_', '-' or '.'",
                       show=False)
        if _label_values(value) is None:
            check.fail(f"labels.{name}", "must be a label value (integer >= 0) or a list of them", value)
    if not any(v == 0 for v in labels.values()):
        check.fail("labels", "has no background label (value 0)", labels)
    regions = [name for name, value in labels.items() if isinstance(value, list)]
    if regions:
        order = dataset.get("regions_class_order")
        if not order:
            check.fail("regions_class_order", "is needed with region labels (lists)", show=False)
        foreground = [n for n, v in labels.items() if n != "ignore" and not all(x == 0 for x in _label_values(v))]
        if not isinstance(order, list) or not all(_is_int(v) for v in order) or len(order) != len(foreground):
            check.fail("regions_class_order", f"must be a list of {len(foreground)} integers (one per region)",
                       order)
    channels = dataset.get("channel_names") or dataset.get("modality")
    if not isinstance(channels, dict) or not channels or not all(isinstance(v, str) for v in channels.values()):
        check.fail("channel_names", "must be a non-empty mapping of channel to name", channels)
    for key, kind in (("file_ending", str), ("numTraining", numbers.Integral)):
        if key in dataset and (not isinstance(dataset[key], kind) or isinstance(dataset[key], bool)):
            check.fail(key, f"must be {'a string' if kind is str else 'an integer'}", dataset[key])
    orientation = dataset.get("image_orientation")
    if orientation is not None and not (isinstance(orientation, str) and is_orientation_code(orientation.upper())):
        check.fail("image_orientation", "must be three letters such as RAS", orientation)
    if "overwrite_image_reader_writer" in dataset:
        check.require_name("overwrite_image_reader_writer", dataset["overwrite_image_reader_writer"], READER_WRITERS,
                           "nnU-Net image readers")
