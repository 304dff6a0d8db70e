"""Contrast-agnostic augmentation for nnU-Net v2, and the trainer that uses it.

The embedded demo models must segment the cord on contrasts they never saw. The
network is therefore shown images whose intensities carry no fixed meaning:
each training patch (after nnU-Net's spatial transform, before its own intensity
transforms) goes through :class:`ContrastAgnosticTransform`:

- synthetic lesions (region-based model only): ellipsoids inside the cord,
  labelled 2, brighter or darker than the cord; and lesion mimics that stay
  cord (a brighter or darker core along the whole patch, like grey matter);
- in the SynthSeg manner, per-label random intensities: the cord, the lesions
  and a few intensity classes of the background (quantiles of the real patch:
  CSF, fat, muscle, bone fall into different classes) each get a random mean
  and spread, then a random blur (partial volume);
- otherwise random intensity inversion;
- random gamma, smooth multiplicative bias field, anisotropic slabs (thick
  slices along one random axis: axial or sagittal slabs), Gaussian noise;
- the patch is z-scored again, as nnU-Net's preprocessing z-scores a scan.

:class:`ContrastAgnosticTrainer` is ``nnUNetTrainer`` with this transform
inserted, mirroring restricted to left-right and a wall-clock cap. The
network is nnU-Net's standard one, so checkpoints load as ``nnUNetTrainer``.

Example:
    >>> import torch
    >>> t = ContrastAgnosticTransform(spacing=(3.0, 0.9, 0.9), lesions=True)
    >>> seg = torch.zeros(1, 16, 32, 32); seg[0, :, 12:20, 12:20] = 1
    >>> out = t(image=torch.randn(1, 16, 32, 32), segmentation=seg)
    >>> out["image"].shape == (1, 16, 32, 32)
    True
"""

from __future__ import annotations

import time
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

CORD, LESION = 1, 2


def paint_lesions(image: torch.Tensor, seg: torch.Tensor, spacing: Sequence[float], count: int,
                  rng: np.random.Generator, bright: bool = False) -> None:
    """Paint ``count`` ellipsoid lesions inside the cord of one patch, in place.

    ``image`` is (C, Z, Y, X), ``seg`` (1, Z, Y, X) with the cord as 1. Each lesion
    is 2-8 mm in radius along the cord (axis 0) and 1.5-3.5 mm across, clipped to the
    cord, labelled 2, and brighter (mostly) or darker than the cord by 0.8-2 of
    the patch's standard deviation, with a soft edge; only brighter if ``bright``.
    (Fainter, smaller lesions left the first retraining's lesion head silent.)
    """
    cord = seg[0] >= CORD
    inside = torch.nonzero(cord)
    if len(inside) == 0:
        return
    grid = [torch.arange(n, dtype=torch.float32) for n in cord.shape]
    scale = float(image.std()) or 1.0
    for _ in range(count):
        centre = inside[rng.integers(len(inside))].float()
        radii = (rng.uniform(2.0, 8.0), rng.uniform(1.5, 3.5), rng.uniform(1.5, 3.5))  # mm: SI, AP, RL
        distance = sum(((grid[a] - centre[a]) * spacing[a] / radii[a]).pow(2).view(
            [-1 if b == a else 1 for b in range(3)]) for a in range(3))
        region = (distance <= 1.0) & cord
        if not region.any():
            continue
        weight = torch.clamp(1.5 - distance, 0.0, 1.0) * cord  # soft edge, only inside the cord
        sign = 1.0 if bright or rng.random() < 0.8 else -1.0  # MS lesions: bright on T2w/T2*w, dark on T1w
        image += (sign * rng.uniform(0.8, 2.0) * scale) * weight
        seg[0][region] = LESION


def paint_core(image: torch.Tensor, seg: torch.Tensor, spacing: Sequence[float], rng: np.random.Generator) -> None:
    """Brighten (mostly) or darken the cord's core along the whole patch, in place; labels unchanged.

    Grey matter is brighter than white matter on T2*w and the central canal shows on
    T2w: a long, central, brighter core is cord, not lesion. Without such negatives the
    lesion head learned "brighter inside the cord" and fired along the core of healthy
    cords (one component per healthy scan). The core is the cord less 1-2.5 mm in plane
    (axes 1 and 2), softened by a blur.
    """
    cord = (seg[0] >= CORD).float()
    depth = rng.uniform(1.0, 2.5)  # mm from the cord's edge, in plane
    kernel = [1] + [2 * max(1, int(round(depth / spacing[a]))) + 1 for a in (1, 2)]
    core = 1.0 - F.max_pool3d((1.0 - cord)[None, None], kernel, stride=1, padding=[k // 2 for k in kernel])[0, 0]
    if not core.any():
        return
    sign = 1.0 if rng.random() < 0.7 else -1.0
    weight = blur(core[None], [0.5, 1.0, 1.0])[0] * cord
    image += (sign * rng.uniform(0.5, 2.0) * float(image.std() or 1.0)) * weight


def synthesize_intensities(image: torch.Tensor, seg: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """SynthSeg-style: a random mean and spread per label; background split into intensity classes.

    The structure of the real patch is kept (its quantile classes), its contrast is not;
    a lesion's mean differs from its cord's by 0.25-0.6 (means lie in 0-1).
    """
    channel = image[0]
    classes = torch.zeros(channel.shape, dtype=torch.long)
    background = seg[0] < CORD
    n_background = int(rng.integers(2, 6))
    if background.any():
        edges = torch.quantile(channel[background][:: max(1, int(background.sum()) // 20000)].float(),
                               torch.linspace(0, 1, n_background + 1)[1:-1])
        classes[background] = torch.bucketize(channel[background], edges)
    classes[seg[0] == CORD] = n_background
    classes[seg[0] == LESION] = n_background + 1
    means = rng.uniform(0.0, 1.0, n_background + 2)
    # A lesion as bright as its cord would be a label the image does not show: keep them apart.
    offset, cord_mean = rng.uniform(0.25, 0.6), means[n_background]
    means[n_background + 1] = cord_mean + offset if cord_mean + offset <= 1.0 else cord_mean - offset
    means = torch.tensor(means, dtype=torch.float32)
    spreads = torch.tensor(rng.uniform(0.0, 0.08, n_background + 2), dtype=torch.float32)
    synthetic = means[classes] + spreads[classes] * torch.randn(channel.shape)
    return blur(synthetic[None], [rng.uniform(0.3, 1.2) for _ in range(3)])


def blur(image: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur of a (C, Z, Y, X) tensor, ``sigmas`` in voxels per axis."""
    out = image[None]
    for axis, sigma in enumerate(sigmas):
        radius = max(1, int(3 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = (kernel / kernel.sum()).view([1, 1] + [-1 if b == axis else 1 for b in range(3)])
        padding = [0, 0, 0, 0, 0, 0]
        padding[2 * (2 - axis)] = padding[2 * (2 - axis) + 1] = radius
        out = torch.cat([F.conv3d(F.pad(out[:, c:c + 1], padding, mode="replicate"), kernel)
                         for c in range(out.shape[1])], 1)
    return out[0]


def bias_field(shape: Tuple[int, ...], strength: float, rng: np.random.Generator) -> torch.Tensor:
    """A smooth multiplicative field: exp of a coarse random grid, upsampled trilinearly."""
    coarse = torch.tensor(rng.normal(0.0, strength, (1, 1, 3, 4, 4)), dtype=torch.float32)
    return torch.exp(F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0])


def thick_slices(image: torch.Tensor, axis: int, factor: float) -> torch.Tensor:
    """Average ``factor`` voxels along ``axis`` (thick slices), then interpolate back to the grid."""
    size = list(image.shape[1:])
    coarse = size.copy()
    coarse[axis] = max(1, int(round(size[axis] / factor)))
    low = F.interpolate(image[None], size=coarse, mode="area")
    return F.interpolate(low, size=size, mode="trilinear", align_corners=False)[0]


class ContrastAgnosticTransform(BasicTransform):
    """Random lesions and intensity remapping of a (C, Z, Y, X) patch; see the module docstring.

    Args:
        spacing: voxel spacing of the patch in mm (the plans' spacing, axis order of the data).
        lesions: paint synthetic lesions (region-based cord + lesion model).
        p_lesion: probability that a patch with cord gets 1-4 lesions.
        p_core: probability (region-based model) that the cord's core is made brighter or
            darker, a lesion mimic that stays cord (:func:`paint_core`).
        p_synth: probability of SynthSeg-style random intensities.
        p_invert: probability of inversion when intensities are not synthesized.
    """

    def __init__(self, spacing: Sequence[float], lesions: bool = False, p_lesion: float = 0.7,
                 p_core: float = 0.7, p_synth: float = 0.4, p_invert: float = 0.3):
        super().__init__()
        self.spacing = tuple(float(s) for s in spacing)
        self.lesions, self.p_lesion, self.p_core = lesions, p_lesion, p_core
        self.p_synth, self.p_invert = p_synth, p_invert

    def apply(self, data_dict: dict, **params) -> dict:
        rng = np.random.default_rng(np.random.randint(2 ** 31))  # per-worker seeding stays nnU-Net's
        image = data_dict["image"].float()
        seg = data_dict["segmentation"]
        if self.lesions and rng.random() < self.p_lesion:
            paint_lesions(image, seg, self.spacing, int(rng.integers(1, 5)), rng)
        if rng.random() < self.p_synth:
            image = synthesize_intensities(image, seg, rng)
        elif rng.random() < self.p_invert:
            image = -image
        if self.lesions and rng.random() < self.p_core:  # after the remapping, which would flatten the cord
            paint_core(image, seg, self.spacing, rng)
        if rng.random() < 0.5:  # gamma on [0, 1]
            low, high = image.min(), image.max()
            image = ((image - low) / (high - low + 1e-6)).pow(float(np.exp(rng.normal(0.0, 0.4))))
        if rng.random() < 0.5:
            image = image - image.min()
            image = image * bias_field(tuple(image.shape[1:]), rng.uniform(0.1, 0.5), rng)
        if rng.random() < 0.3:  # axial (axis 0, along the cord) or sagittal/coronal slabs
            axis = int(rng.choice([0, 0, 1, 2]))
            image = thick_slices(image, axis, rng.uniform(1.5, 4.0) if axis == 0 else rng.uniform(2.0, 6.0))
        if rng.random() < 0.3:
            image = image + rng.uniform(0.0, 0.1) * float(image.std()) * torch.randn(image.shape)
        data_dict["image"] = (image - image.mean()) / (image.std() + 1e-6)
        data_dict["segmentation"] = seg
        return data_dict


def _nnunet_trainer():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return nnUNetTrainer


class ContrastAgnosticTrainer(_nnunet_trainer()):
    """nnUNetTrainer with :class:`ContrastAgnosticTransform`, left-right mirroring and a time cap.

    Set the budget on a subclass (class attributes) before nnU-Net builds it:
    ``epochs``, ``iterations``, ``max_minutes`` (stops after the epoch that passes it),
    ``learning_rate`` (nnU-Net's initial one), ``initial_weights`` (a cord network's
    or region network's checkpoint to start from, see :meth:`load_initial_weights`; None starts
    from scratch).
    """

    epochs = 100
    iterations = 50
    max_minutes = float("inf")
    learning_rate = 1e-2
    initial_weights = None
    left_right_axis = 2  # LAS data: arrays are (S-I, A-P, R-L)

    # nnUNetTrainer records its own arguments by name: keep its signature.
    def __init__(self, plans: dict, configuration: str, fold, dataset_json: dict,
                 device: torch.device = torch.device("cpu")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.initial_lr = self.learning_rate
        self.num_iterations_per_epoch = self.iterations
        self.num_val_iterations_per_epoch = 2
        self.save_every = 10 ** 6  # only the final checkpoint

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

        _, dummy_2d, _, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        # nnU-Net rotates thick-slice patches by up to 180 degrees in plane; the cord's anterior side is
        # anatomy (the vertebral body in front), so +/- 30 degrees.
        rotation = (-np.pi / 6, np.pi / 6)
        initial_patch_size = get_patch_size(self.configuration_manager.patch_size, rotation, rotation, rotation,
                                            (0.85, 1.25))
        if dummy_2d:
            initial_patch_size[0] = self.configuration_manager.patch_size[0]
        # The cord is symmetric left-right only; the axis order is the plans' transpose of LAS.
        mirror_axes = (list(self.plans_manager.transpose_forward).index(self.left_right_axis),)
        self.inference_allowed_mirroring_axes = mirror_axes
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
        from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform

        composed = super().get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm, is_cascaded, foreground_labels, regions, ignore_label)
        spacing = [self.configuration_manager.spacing[a] for a in self.plans_manager.transpose_forward]
        position = next(i for i, t in enumerate(composed.transforms) if isinstance(t, SpatialTransform)) + 1
        if position < len(composed.transforms) and isinstance(composed.transforms[position], Convert2DTo3DTransform):
            position += 1
        # After the spatial transform (labels still plain, before nnU-Net's own intensity transforms).
        composed.transforms.insert(position, ContrastAgnosticTransform(spacing, lesions=regions is not None))
        return composed

    def on_train_epoch_start(self):
        """nnU-Net's poly learning rate, over epochs or over ``max_minutes``, whichever runs out first.

        A time-capped run thus still anneals the learning rate to near 0.
        """
        super().on_train_epoch_start()
        elapsed = (time.perf_counter() - self.started) / 60
        fraction = min(0.99, max(self.current_epoch / self.num_epochs, elapsed / self.max_minutes))
        learning_rate = self.initial_lr * (1 - fraction) ** 0.9
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.print_to_log_file(f"learning rate by time and epochs: {learning_rate:.5f}")

    def load_initial_weights(self, checkpoint) -> None:
        """Start from a trained network: a region network as it is, a cord network with its head as ``sc``'s.

        A softmax cord model's heads are (background 0, cord logits), as
        ``make_demo_models.as_cord_model`` makes ``demo-sc``; the other regions' head
        rows (the lesion) keep nnU-Net's initialisation. A lesion head then trains on
        top of a cord network that already generalises, instead of sharing a CPU hour
        with it. A region-based checkpoint (``demo-sc-lesion``) is loaded as it is.
        """
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        region_based = "regions_class_order" in saved.get("init_args", {}).get("dataset_json", {})
        state = self.network.state_dict()
        for name, tensor in saved["network_weights"].items():
            if ".seg_layers." in name and not region_based:
                tensor = torch.cat([tensor[1:2], state[name][1:]])
            state[name] = tensor
        self.network.load_state_dict(state)
        self.print_to_log_file(f"initial weights: {checkpoint}")

    def run_training(self):
        """nnU-Net's loop, ending after the epoch that passes ``max_minutes``."""
        start = self.started = time.perf_counter()
        self.on_train_start()
        if self.initial_weights is not None:
            self.load_initial_weights(self.initial_weights)
        for _ in range(self.current_epoch, self.num_epochs):
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                outputs = [self.validation_step(next(self.dataloader_val))
                           for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(outputs)
            self.on_epoch_end()
            if (time.perf_counter() - start) / 60 > self.max_minutes:
                self.print_to_log_file(f"time cap of {self.max_minutes} min reached after epoch {self.current_epoch}")
                break
        self.on_train_end()
