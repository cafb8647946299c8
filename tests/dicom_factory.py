"""Small synthetic CT DICOM files for tests, written with pydicom (no downloads, no shared data)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, ExplicitVRLittleEndian, generate_uid

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
FRAME_OF_REFERENCE_UID = "1.2.826.0.1.3680043.8.498.2"


def phantom_hu(size: int = 64, seed: int = 0, noise_hu: float = 0.0) -> np.ndarray:
    """A body-like phantom in HU: air, a water ellipse, a bone ring and small vessels (float32, size x size)."""
    y, x = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    hu = np.full((size, size), -1000.0)
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 < 1
    hu[body] = 40.0
    ring = ((x / 0.3) ** 2 + (y / 0.25) ** 2 < 1) & ((x / 0.22) ** 2 + (y / 0.17) ** 2 > 1)
    hu[ring] = 900.0
    for cx, cy in ((-0.55, 0.1), (0.55, -0.1), (0.0, 0.45)):
        hu[(x - cx) ** 2 + (y - cy) ** 2 < 0.004] = 250.0
    if noise_hu:
        hu = hu + np.random.default_rng(seed).normal(0.0, noise_hu, hu.shape)
    return hu.astype(np.float32)


def _stored(hu: np.ndarray, slope: float, intercept: float, signed: bool) -> np.ndarray:
    """round((HU - intercept) / slope), clipped to 16 bits."""
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    return np.clip(np.round((np.asarray(hu, np.float64) - intercept) / slope), info.min, info.max).astype(dtype)


def _new_dataset(sop_class_uid: str, modality: str, patient_id: str, series_uid: str | None) -> Dataset:
    """File meta, SOP, patient, study, series, frame of reference and equipment attributes a CT IOD requires."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = "Test^Phantom"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = STUDY_UID
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
    ds.ReferringPhysicianName = ""
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 1
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE_UID
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "Test"
    ds.ContentDate, ds.ContentTime = "20240101", "120000"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def write_ct_slice(
    path: str | os.PathLike,
    hu: np.ndarray,
    *,
    modality: str = "CT",
    rescale_intercept: float | None = -1024.0,
    rescale_slope: float | None = 1.0,
    series_uid: str | None = None,
    instance_number: int = 1,
    z_mm: float = 0.0,
    pixel_spacing_mm: float = 0.7,
    patient_id: str = "TEST-001",
    signed: bool = False,
    pixel_padding_value: int | None = None,
) -> Dataset:
    """Write one single-frame CT slice with stored = round((HU - intercept) / slope); returns the dataset."""
    intercept = 0.0 if rescale_intercept is None else rescale_intercept
    slope = 1.0 if rescale_slope is None else rescale_slope
    stored = _stored(hu, slope, intercept, signed)

    ds = _new_dataset(CTImageStorage, modality, patient_id, series_uid)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = instance_number
    ds.AcquisitionNumber = 1
    ds.KVP = 120
    ds.ImagePositionPatient = [0.0, 0.0, float(z_mm)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    ds.SliceThickness = 5.0
    ds.Rows, ds.Columns = stored.shape
    ds.PixelRepresentation = 1 if signed else 0
    if rescale_intercept is not None:
        ds.RescaleIntercept = rescale_intercept
    if rescale_slope is not None:
        ds.RescaleSlope = rescale_slope
    if pixel_padding_value is not None:
        ds.PixelPaddingValue = pixel_padding_value
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_ct_series(folder: str | os.PathLike, volume_hu: np.ndarray, **kwargs) -> list[str]:
    """Write a (D, H, W) HU volume as one series of D slices 5 mm apart; returns the file paths."""
    os.makedirs(folder, exist_ok=True)
    series_uid = kwargs.pop("series_uid", None) or generate_uid()
    paths = []
    for index, slice_hu in enumerate(volume_hu):
        path = os.path.join(folder, f"slice_{index + 1:03d}.dcm")
        write_ct_slice(path, slice_hu, series_uid=series_uid, instance_number=index + 1, z_mm=5.0 * index, **kwargs)
        paths.append(path)
    return paths


def _item(**attributes) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def _code(code) -> Dataset:
    return _item(CodeValue=code.value, CodingSchemeDesignator=code.scheme_designator, CodeMeaning=code.meaning)


def write_enhanced_ct(
    path: str | os.PathLike,
    volume_hu: np.ndarray,
    *,
    rescale: tuple[float, float] | Sequence[tuple[float, float]] = (1.0, -1024.0),
    z_positions: Sequence[float] | None = None,
    pixel_spacing_mm: float = 0.7,
    patient_id: str = "TEST-001",
    signed: bool = False,
    pixel_padding_value: int | None = None,
) -> Dataset:
    """Write a (F, H, W) HU volume as one Enhanced CT Image (multi-frame) file; returns the dataset.

    ``rescale`` is one (slope, intercept) in the shared functional groups, or one per frame in the per-frame groups;
    frame k is at z ``z_positions[k]`` (default 5 mm apart). The file is a valid ORIGINAL acquisition (dciodvfy).
    """
    frames = len(volume_hu)
    per_frame_rescale = not isinstance(rescale[0], (int, float))
    rescales = list(rescale) if per_frame_rescale else [rescale] * frames
    z_positions = list(z_positions) if z_positions is not None else [5.0 * k for k in range(frames)]
    stored = np.stack([_stored(hu, s, i, signed) for hu, (s, i) in zip(volume_hu, rescales)])

    ds = _new_dataset(EnhancedCTImageStorage, "CT", patient_id, None)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = "20240101120000"
    ds.AcquisitionDuration = 1.0
    ds.ContentQualification = "RESEARCH"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ManufacturerModelName, ds.DeviceSerialNumber, ds.SoftwareVersions = "Phantom", "1", "1"
    ds.AcquisitionContextSequence = []
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.PixelRepresentation = 1 if signed else 0
    if pixel_padding_value is not None:
        ds.PixelPaddingValue = pixel_padding_value

    dimension_uid = generate_uid()
    ds.DimensionOrganizationSequence = [_item(DimensionOrganizationUID=dimension_uid)]
    ds.DimensionIndexSequence = [
        _item(
            DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=0x00209056, FunctionalGroupPointer=0x00209111
        ),
        _item(
            DimensionOrganizationUID=dimension_uid, DimensionIndexPointer=0x00209057, FunctionalGroupPointer=0x00209111
        ),
    ]
    shared = _item(
        PixelMeasuresSequence=[_item(PixelSpacing=[pixel_spacing_mm, pixel_spacing_mm], SliceThickness=5.0)],
        PlaneOrientationSequence=[_item(ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0])],
        FrameAnatomySequence=[_item(AnatomicRegionSequence=[_code(codes.SCT.Chest)], FrameLaterality="U")],
        IrradiationEventIdentificationSequence=[_item(IrradiationEventUID=generate_uid())],
        CTImageFrameTypeSequence=[
            _item(
                FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
                PixelPresentation="MONOCHROME",
                VolumetricProperties="VOLUME",
                VolumeBasedCalculationTechnique="NONE",
            )
        ],
        CTAcquisitionTypeSequence=[_item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")],
        CTAcquisitionDetailsSequence=[
            _item(
                DataCollectionDiameter=500.0,
                GantryDetectorTilt=0.0,
                TableHeight=100.0,
                RotationDirection="CW",
                RevolutionTime=0.5,
                SingleCollimationWidth=0.625,
                TotalCollimationWidth=40.0,
            )
        ],
        CTTableDynamicsSequence=[_item(TableSpeed=40.0, TableFeedPerRotation=20.0, SpiralPitchFactor=0.5)],
        CTGeometrySequence=[_item(DistanceSourceToDetector=1000.0, DistanceSourceToDataCollectionCenter=600.0)],
        CTReconstructionSequence=[
            _item(
                ReconstructionAlgorithm="FILTER_BACK_PROJ",
                ConvolutionKernel="STANDARD",
                ConvolutionKernelGroup="SOFT_TISSUE",
                ReconstructionDiameter=pixel_spacing_mm * stored.shape[2],
                ReconstructionPixelSpacing=[pixel_spacing_mm, pixel_spacing_mm],
                ReconstructionAngle=360.0,
                ImageFilter="NONE",
            )
        ],
        CTExposureSequence=[
            _item(
                ExposureTimeInms=500.0,
                XRayTubeCurrentInmA=200.0,
                ExposureInmAs=100.0,
                ExposureModulationType="NONE",
                CTDIvol=10.0,
                CTDIPhantomTypeCodeSequence=[_code(codes.DCM.IECBodyDosimetryPhantom)],
            )
        ],
        CTXRayDetailsSequence=[_item(KVP=120.0, FocalSpots=[1.0], FilterType="BODY", FilterMaterial=["ALUMINUM"])],
    )
    if not per_frame_rescale:
        shared.PixelValueTransformationSequence = [
            _item(RescaleSlope=rescales[0][0], RescaleIntercept=rescales[0][1], RescaleType="HU")
        ]
    ds.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for k in range(frames):
        item = _item(
            FrameContentSequence=[
                _item(
                    FrameAcquisitionDateTime="20240101120000",
                    FrameReferenceDateTime="20240101120000",
                    FrameAcquisitionDuration=500.0,
                    StackID="1",
                    InStackPositionNumber=k + 1,
                    DimensionIndexValues=[1, k + 1],
                )
            ],
            PlanePositionSequence=[_item(ImagePositionPatient=[0.0, 0.0, float(z_positions[k])])],
            CTPositionSequence=[
                _item(
                    TablePosition=-float(z_positions[k]),
                    ReconstructionTargetCenterPatient=[0.0, 0.0, float(z_positions[k])],
                    DataCollectionCenterPatient=[0.0, 0.0, float(z_positions[k])],
                )
            ],
        )
        if per_frame_rescale:
            slope, intercept = rescales[k]
            item.PixelValueTransformationSequence = [
                _item(RescaleSlope=slope, RescaleIntercept=intercept, RescaleType="HU")
            ]
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds
