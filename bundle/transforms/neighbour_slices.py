"""Adjacent slices as channels, for the multi-slice StructKPN (``StructKPN(slices=S)``): each slice of a series with
its neighbours in slice order, by position, with the series' ends and gaps handled."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from bundle.io.ct_dicom import SOURCE_FILES_KEY, CTInputError, frame_geometry, is_multiframe, read_dicom
from bundle.io.datalist import neighbour_keys
from bundle.utils.slices import check_slices

__all__ = ["AddNeighbourSlicesd", "GAP_FACTOR", "StackNeighbourSlicesd", "neighbour_indices", "slice_positions_mm"]

logger = logging.getLogger(__name__)

GAP_FACTOR = 1.5
"""Two slices farther apart than this times the series' median spacing are not neighbours (a gap in the series)."""


def _depth(positions: np.ndarray, orientation: np.ndarray) -> np.ndarray:
    """(N, 3) positions (mm) along the normal of ``orientation`` (ImageOrientationPatient), the normal pointing to
    increasing patient coordinate along its main axis (axial slices: increasing z, inferior to superior)."""
    normal = np.cross(orientation[:3], orientation[3:])
    normal = normal * np.sign(normal[np.argmax(np.abs(normal))])
    return positions @ normal


def slice_positions_mm(files: Sequence[str], slices: int) -> np.ndarray | None:
    """
    Each slice's ImagePositionPatient projected on the slice normal (mm; axial slices: z, increasing inferior to
    superior) for the ``slices`` slices of a volume read from DICOM ``files`` (one file per slice, in the volume's
    order, or one multi-frame file: its frames' Plane Position functional groups). None when a slice has no
    position or orientation.
    """
    if len(files) == 1 and slices > 1:
        ds = read_dicom(files[0], stop_before_pixels=True)
        if not is_multiframe(ds):
            raise CTInputError(files[0], f"one single-frame file for a volume of {slices} slices")
        geometry = frame_geometry(ds, files[0])
        return _depth(geometry.positions, geometry.orientation)
    if len(files) != slices:
        raise CTInputError(files[0], f"{len(files)} source files for a volume of {slices} slices")
    positions, orientations = [], []
    for name in files:
        ds = read_dicom(name, stop_before_pixels=True)
        position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if not position or not orientation or len(position) != 3 or len(orientation) != 6:
            return None
        positions.append(np.asarray(position, dtype=float))
        orientations.append(np.asarray(orientation, dtype=float))
    return _depth(np.stack(positions), orientations[0])


def neighbour_indices(positions_mm: Sequence[float], slices: int, gap_factor: float = GAP_FACTOR) -> np.ndarray:
    """
    (N, S) indices: row i lists the slices fed with slice i, in slice order (increasing position), slice i at
    column S // 2.

    The slices are ordered by ``positions_mm``; the series splits into runs where two consecutive slices are more
    than ``gap_factor`` times the median spacing apart. A neighbour beyond the end of its run (an end of the series,
    or a gap) repeats the run's last slice on that side: for S = 3 the slice itself, the single-slice input.
    A single slice is its own neighbour.

    Example::

        >>> neighbour_indices([0.0, 5.0, 10.0, 25.0, 30.0], 3).tolist()  # a 15 mm gap after 10 mm
        [[0, 0, 1], [0, 1, 2], [1, 2, 2], [3, 3, 4], [3, 4, 4]]
    """
    check_slices(slices)
    positions = np.asarray(positions_mm, dtype=float)
    order = np.argsort(positions, kind="stable")
    rank = np.empty(len(order), dtype=int)
    rank[order] = np.arange(len(order))
    spacing = np.diff(positions[order])
    breaks = spacing > gap_factor * np.median(spacing) if len(spacing) else spacing.astype(bool)
    run = np.concatenate([[0], np.cumsum(breaks)])  # run of each sorted slice
    starts = np.searchsorted(run, run, side="left")  # first sorted index of each slice's run
    stops = np.searchsorted(run, run, side="right") - 1  # last one
    offsets = np.arange(slices) - slices // 2
    neighbours = np.clip(rank[:, None] + offsets[None, :], starts[rank][:, None], stops[rank][:, None])
    return order[neighbours]


class AddNeighbourSlicesd(MapTransform):
    """
    Give every slice of a channel-first series its neighbours as channels: (C, H, W, D) -> (S * C, H, W, D), channel
    ``s * C + c`` of slice d being channel c of the s-th slice of :func:`neighbour_indices` (slice order, slice d
    at s = S // 2), the input of ``StructKPN(slices=S)`` through ``SliceInferer``. Run it after windowing and before
    :class:`~bundle.transforms.AddDoseConditiond` (which, with ``slices=S``, estimates the noise of the centre
    slice).

    Slice positions are those of the volume's DICOM files (``SOURCE_FILES_KEY`` in its metadata, as
    :class:`~bundle.io.CTDicomReader` records them; a multi-frame file's frame positions); a volume without them
    (NIfTI) is taken as evenly spaced in its order. A DICOM series with a slice that has no position gets no
    neighbours (each slice repeated: the single-slice input), with a warning. A (C, H, W) slice has no neighbours.

    Args:
        keys: keys of the series.
        slices: odd number S of slices a slice is fed with.
        gap_factor: see :func:`neighbour_indices`.

    Example::

        AddNeighbourSlicesd(keys="image", slices=3)  # (1, 512, 512, 30) -> (3, 512, 512, 30)
    """

    def __init__(
        self, keys: KeysCollection, slices: int = 3, gap_factor: float = GAP_FACTOR, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        check_slices(slices)
        self.slices = slices
        self.gap_factor = gap_factor

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.stack(d[key], self.neighbours(d[key]))
        return d

    def neighbours(self, img: NdarrayOrTensor) -> np.ndarray:
        """(D, S) :func:`neighbour_indices` of the (C, H, W, D) series ``img`` (a (C, H, W) slice: (1, S) zeros)."""
        count = img.shape[-1] if img.ndim == 4 else 1
        files = img.meta.get(SOURCE_FILES_KEY) if isinstance(img, MetaTensor) else None
        positions = np.arange(count, dtype=float)
        if files and count > 1:
            read = slice_positions_mm([str(f) for f in files], count)
            if read is None:
                logger.warning("%s: a slice has no ImagePositionPatient/ImageOrientationPatient; every slice is fed "
                               "without neighbours", files[0])  # fmt: skip
                return np.repeat(np.arange(count)[:, None], self.slices, axis=1)
            positions = read
        return neighbour_indices(positions, self.slices, self.gap_factor)

    def stack(self, img: NdarrayOrTensor, neighbours: np.ndarray) -> NdarrayOrTensor:
        """(C, H, W, D) ``img`` -> (S * C, H, W, D) with the (D, S) ``neighbours``; (C, H, W) -> (S * C, H, W)."""
        if img.ndim not in (3, 4):
            raise ValueError(f"expected a channel-first slice (C, H, W) or series (C, H, W, D), got {tuple(img.shape)}.")
        series = convert_to_tensor(img, track_meta=False)
        volume = series if series.ndim == 4 else series.unsqueeze(-1)
        index = torch.as_tensor(neighbours.T.copy(), device=volume.device)  # (S, D)
        stacked = torch.cat([volume[..., row] for row in index], dim=0)  # (S * C, H, W, D), slice-major
        stacked = stacked if series.ndim == 4 else stacked.squeeze(-1)
        if isinstance(img, MetaTensor):
            return MetaTensor(stacked, meta=img.meta, applied_operations=img.applied_operations)
        return convert_to_dst_type(stacked, dst=img)[0]


class StackNeighbourSlicesd(MapTransform):
    """
    Stack the slices a datalist item lists around its own (loaded under :func:`bundle.io.neighbour_keys`, from
    :func:`bundle.io.with_neighbour_slices`) into one image: the (C, H, W) images under ``key_-1``, ``key``,
    ``key_+1`` (3 slices) become (S * C, H, W) in slice order under ``output_key`` (``key`` itself by default),
    with ``key``'s metadata, and the neighbour keys are removed: the training input of ``StructKPN(slices=S)``.

    Args:
        keys: keys of the centre slices.
        slices: odd number S of slices.
        output_key: key of the stack (None: the centre slice's key); needs a single key.

    Example::

        StackNeighbourSlicesd(keys="image", slices=3)  # image_-1, image, image_+1 -> image (3, H, W)
    """

    def __init__(self, keys: KeysCollection, slices: int = 3, output_key: str | None = None,
                 allow_missing_keys: bool = False) -> None:  # fmt: skip
        super().__init__(keys, allow_missing_keys)
        check_slices(slices)
        if output_key is not None and len(self.keys) != 1:
            raise ValueError(f"output_key needs a single key, got {self.keys}.")
        self.slices = slices
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            names = neighbour_keys([str(key)], self.slices)
            missing = [name for name in names if name not in d]
            if missing:
                raise KeyError(f"{missing}: the slices around {key!r} that {self.slices} slices need are missing")
            images = [convert_to_tensor(d[name], track_meta=False) for name in names]
            shapes = {tuple(image.shape) for image in images}
            if len(shapes) > 1:
                files = [d[name].meta.get("filename_or_obj") if isinstance(d[name], MetaTensor) else name
                         for name in names]  # fmt: skip
                raise CTInputError(files[len(files) // 2], f"its neighbour slices {files} differ in shape: {shapes}")
            stacked = torch.cat(images, dim=0)
            centre = d[key]
            for name in names:
                if name != key:
                    del d[name]
            if isinstance(centre, MetaTensor):
                d[self.output_key or key] = MetaTensor(stacked, meta=centre.meta, applied_operations=centre.applied_operations)
            else:
                d[self.output_key or key] = convert_to_dst_type(stacked, dst=centre)[0]
        return d
