"""Multi-slice inference: each slice fed with its neighbours in slice order (by position), ends and gaps handled, the
single-slice path unchanged, and a multi-slice model run end to end through inference.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.transforms import LoadImaged, ScaleIntensityRanged
from pydicom.uid import generate_uid

from bundle.io import ModelSettingsError, find_ct_inputs, read_ct_slice, write_model_settings
from bundle.transforms import AddDoseConditiond, AddNeighbourSlicesd, ValidateCTImaged, neighbour_indices
from bundle.utils import read_bundle_config
from dicom_factory import write_ct_slice

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def write_series(folder: Path, z_mm: list[float], seed: int = 0, size: int = 24) -> dict[float, float]:
    """One series of constant slices (HU = 10 * z + 40) at ``z_mm``, written under shuffled names with shuffled
    InstanceNumbers (so neither file order nor instance order is slice order); returns {z: HU}."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names, instances = rng.permutation(len(z_mm)), rng.permutation(len(z_mm)) + 1
    series_uid = generate_uid()
    for z, name, instance in zip(z_mm, names, instances):
        write_ct_slice(folder / f"{name:03d}.dcm", np.full((size, size), 10.0 * z + 40.0, np.float32),
                       series_uid=series_uid, instance_number=int(instance), z_mm=z)  # fmt: skip
    return {z: 10.0 * z + 40.0 for z in z_mm}


def stacked_hu(folder: Path, slices: int = 3) -> tuple[np.ndarray, list[float]]:
    """inference.json's loading and windowing, then AddNeighbourSlicesd: (S, D) HU of each channel of each slice
    (constant slices), and the z of each slice of the volume."""
    parser = read_bundle_config(CONFIGS / "inference.json")
    parser.update({"slices": slices, "dose_aware": False})
    transforms = [*parser.get_parsed_content("load_transforms"), *parser.get_parsed_content("conditioning_transforms")]
    (item,) = find_ct_inputs(folder)
    data = {"image": item["image"]}
    for transform in transforms:
        data = transform(data)
    image = data["image"]
    assert image.shape[:3] == (slices, 24, 24)
    low, high = parser.get_parsed_content("hu_window")
    files = image.meta["source_files"]
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    return image[:, 0, 0, :].numpy() * (high - low) + low, z


def test_neighbours_are_in_slice_order_whatever_the_file_and_instance_order(tmp_path):
    z_mm = [0.0, 3.0, 6.0, 9.0, 12.0]
    hu = write_series(tmp_path / "series", z_mm)
    channels, volume_z = stacked_hu(tmp_path / "series", 5)
    for d, z in enumerate(volume_z):
        rank = z_mm.index(z)
        # slice order, ends replicated (the edge slice repeats)
        expected = [hu[z_mm[min(max(rank + offset, 0), len(z_mm) - 1)]] for offset in (-2, -1, 0, 1, 2)]
        np.testing.assert_allclose(channels[:, d], expected, atol=0.01)


def test_a_gap_and_a_single_slice_fall_back_to_the_centre_slice(tmp_path):
    z_mm = [0.0, 5.0, 10.0, 25.0, 30.0, 35.0]  # 15 mm after 10 mm: more than 1.5 x the median spacing of 5 mm
    hu = write_series(tmp_path / "gap", z_mm)
    channels, volume_z = stacked_hu(tmp_path / "gap")
    expected = {0.0: (0.0, 0.0, 5.0), 5.0: (0.0, 5.0, 10.0), 10.0: (5.0, 10.0, 10.0), 25.0: (25.0, 25.0, 30.0),
                30.0: (25.0, 30.0, 35.0), 35.0: (30.0, 35.0, 35.0)}  # fmt: skip
    for d, z in enumerate(volume_z):
        np.testing.assert_allclose(channels[:, d], [hu[n] for n in expected[z]], atol=0.01)
    write_series(tmp_path / "single", [7.0])
    channels, _ = stacked_hu(tmp_path / "single")
    np.testing.assert_allclose(channels[:, 0], [110.0] * 3, atol=0.01)


def test_neighbour_indices_closed_form():
    # unsorted positions; a gap of 3.1 x the median spacing (1 mm): two runs, slices 1, 2, 0 and 3, 4
    assert neighbour_indices([2.0, 0.0, 1.0, 5.1, 6.1], 3).tolist() == [[2, 0, 0], [1, 1, 2], [1, 2, 0], [3, 3, 4],
                                                                      [3, 4, 4]]  # fmt: skip
    assert neighbour_indices([0.0, 1.0, 2.0], 5).tolist() == [[0, 0, 0, 1, 2], [0, 0, 1, 2, 2], [0, 1, 2, 2, 2]]
    assert neighbour_indices([4.0], 3).tolist() == [[0, 0, 0]]
    assert neighbour_indices([0.0, 1.0, 2.0, 3.4], 3).tolist()[3] == [2, 3, 3]  # 1.4 mm: within 1.5 x 1 mm
    assert neighbour_indices([0.0, 1.0, 2.0, 3.6], 3).tolist()[3] == [3, 3, 3]  # 1.6 mm: a gap
    with pytest.raises(ValueError, match="odd"):
        neighbour_indices([0.0], 2)


def test_nifti_volumes_and_single_slices_are_stacked_in_their_order():
    volume = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 2, 3, 4)  # slice d is d everywhere
    stacked = AddNeighbourSlicesd(keys="image", slices=3)({"image": volume})["image"]
    assert stacked.shape == (3, 2, 3, 4)
    assert stacked[:, 0, 0].tolist() == [[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 3]]
    single = AddNeighbourSlicesd(keys="image", slices=3)({"image": torch.rand(1, 5, 6)})["image"]
    assert single.shape == (3, 5, 6) and torch.equal(single[0], single[1]) and torch.equal(single[2], single[1])


def test_dose_conditioning_of_a_slice_stack_estimates_the_centre_slice():
    centre = torch.randn(1, 64, 64) * 0.01 + 0.5
    stack = torch.cat([torch.zeros_like(centre), centre, torch.ones_like(centre)])
    conditioned = AddDoseConditiond(keys="image", dose_fraction=0.25, slices=3)({"image": stack})["image"]
    single = AddDoseConditiond(keys="image", dose_fraction=0.25)({"image": centre})["image"]
    assert conditioned.shape == (5, 64, 64)
    torch.testing.assert_close(conditioned[:3], stack)
    torch.testing.assert_close(conditioned[3:], single[1:])  # the centre slice's noise, then the dose
    with pytest.raises(ValueError, match=r"\(3 \(slices\), H, W\)"):
        AddDoseConditiond(keys="image", slices=3)({"image": centre})


def test_single_slice_inference_config_is_unchanged():
    parser = read_bundle_config(CONFIGS / "inference.json")
    assert parser.get_parsed_content("slices") == 1
    transforms = parser.get_parsed_content("preprocessing").transforms
    assert [type(t) for t in transforms] == [LoadImaged, ValidateCTImaged, ScaleIntensityRanged, AddDoseConditiond]
    assert transforms[-1].slices == 1
    network = parser.get_parsed_content("network_def")
    assert network.slices == 1 and network.stem[0].in_channels == 3  # image, noise std, dose fraction


def _previous_slice_checkpoint(path: Path, slices: int = 3) -> Path:
    """inference.json's network with ``slices``, whose kernels take the previous slice's pixel (to float
    precision), saved with its settings file."""
    parser = read_bundle_config(CONFIGS / "inference.json")
    parser.update({"slices": slices})
    net = parser.get_parsed_content("network_def")
    last = net.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[net.kernel_size**2 + net.neighbour_size**2 // 2] = 60.0  # centre tap of neighbour 0 (previous)
    torch.save(net.state_dict(), path)
    write_model_settings(path, net, parser.get_parsed_content("hu_window"))
    return path


def _infer(ckpt: Path, dataset: Path, output: Path, **overrides) -> None:
    flow = ConfigWorkflow(config_file=str(CONFIGS / "inference.json"), meta_file=str(CONFIGS / "metadata.json"),
                          logging_file=str(CONFIGS / "logging.conf"), workflow_type="infer", ckpt_path=str(ckpt),
                          dataset_dir=str(dataset), output_dir=str(output), **overrides)  # fmt: skip
    flow.initialize()
    flow.run()
    flow.finalize()


def test_multi_slice_inference_feeds_the_neighbours_and_writes_one_derived_slice_per_input(tmp_path):
    z_mm = [0.0, 5.0, 10.0, 15.0]
    hu = write_series(tmp_path / "data" / "series", z_mm)
    ckpt = _previous_slice_checkpoint(tmp_path / "model.pt")
    _infer(ckpt, tmp_path / "data", tmp_path / "out", slices=3)
    inputs = sorted(p.name for p in (tmp_path / "data" / "series").iterdir())
    outputs = sorted((tmp_path / "out" / "series").iterdir())
    assert [p.name for p in outputs] == inputs  # a derived file per input file, mirrored
    for path in outputs:
        ds = pydicom.dcmread(path)
        z = float(ds.ImagePositionPatient[2])
        previous = hu[z_mm[max(z_mm.index(z) - 1, 0)]]
        # dose-aware at dose 0.25: w = sqrt(0.25) of the input, the rest from the kernels (the previous slice)
        np.testing.assert_allclose(read_ct_slice(path).hu, 0.5 * hu[z] + 0.5 * previous, atol=1.0)


def _root_cause(error: BaseException) -> BaseException:
    """The first exception of a chain (MONAI wraps errors raised while a config is parsed)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def test_a_multi_slice_model_is_refused_with_the_single_slice_setting_and_back(tmp_path):
    ckpt = _previous_slice_checkpoint(tmp_path / "model.pt")
    parser = read_bundle_config(CONFIGS / "inference.json")
    parser.update({"ckpt_path": str(ckpt)})
    with pytest.raises(Exception) as raised:
        parser.get_parsed_content("network_def")
    cause = _root_cause(raised.value)
    assert isinstance(cause, ModelSettingsError) and "slices: trained 3, config 1 (--slices 3)" in str(cause)
    parser = read_bundle_config(CONFIGS / "inference.json")
    parser.update({"slices": 3})  # the shipped single-slice model (its settings file has no "slices")
    with pytest.raises(Exception) as raised:
        parser.get_parsed_content("handlers")
    cause = _root_cause(raised.value)
    assert isinstance(cause, ModelSettingsError) and "slices: trained 1, config 3" in str(cause)


def test_the_denoiser_gives_a_multi_slice_network_a_slice_with_its_neighbours(tmp_path):
    from bundle.evaluation.denoise import load_denoiser

    denoiser = load_denoiser(CONFIGS / "inference.json", _previous_slice_checkpoint(tmp_path / "model.pt"), slices=3)
    stack = np.stack([np.full((24, 24), hu, np.float32) for hu in (-100.0, 50.0, 400.0)])  # slice order
    # dose 0.25: half the centre slice (w = sqrt(0.25)), half the previous slice, which the kernels take
    np.testing.assert_allclose(denoiser.centre(stack, 0.25), np.full((24, 24), 0.5 * 50.0 + 0.5 * -100.0), atol=0.01)
    np.testing.assert_allclose(denoiser(stack[1], 0.25), np.full((24, 24), 50.0), atol=0.01)  # alone: no neighbours
    with pytest.raises(ValueError, match=r"network's 3 adjacent slices"):
        denoiser.centre(stack[:2], 0.25)


@pytest.mark.parametrize("slices", [0, -1, 2, 4])
def test_every_multi_slice_part_refuses_an_even_or_non_positive_slice_count(slices):
    from bundle.io.datalist import with_neighbour_slices
    from bundle.networks import StructKPN
    from bundle.utils import check_slices

    assert check_slices(1) == 1 and check_slices(3) == 3
    for build in (lambda: check_slices(slices), lambda: StructKPN(slices=slices), lambda: neighbour_indices([0.0], slices),
                  lambda: AddNeighbourSlicesd(keys="image", slices=slices),
                  lambda: with_neighbour_slices([{"image": "a"}], slices)):  # fmt: skip
        with pytest.raises(ValueError, match=f"slices must be a positive odd integer, got {slices}"):
            build()
