"""Write a phantom as a scanner + planning system would: a CT series and an RTSTRUCT.

Headers carry the modules DICOM requires (Patient, General Study, Series, Frame of
Reference, Equipment, Image Plane, Image Pixel, CT Image, SOP Common; Structure Set,
ROI Contour, RT ROI Observations), with deterministic UIDs derived from the cohort seed.
Fake PatientName and PatientBirthDate are filled in on purpose: later stages must never
copy them into outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from mmfusion.io import atomic_path
from mmfusion.synth.phantom import Phantom

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; suffix is a hash of the seed


@dataclass(frozen=True)
class PatientHeader:
    """Identity and acquisition facts of one patient's export."""

    patient_id: str
    patient_name: str
    birth_date: str        # YYYYMMDD (fake)
    sex: str               # M / F
    study_date: str        # YYYYMMDD
    uid_seed: str          # entropy for deterministic UIDs
    unsigned: bool         # store pixels as uint16 with intercept -1024 (else int16)
    descending: bool       # InstanceNumber increases as z decreases
    manufacturer: str


def _uid(header: PatientHeader, *parts: object) -> str:
    return generate_uid(prefix=_UID_ROOT, entropy_srcs=[header.uid_seed, *map(str, parts)])


def _ds(value: float) -> str:
    """A Decimal String that fits 16 characters."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def _ds_values(values: np.ndarray) -> list:
    """Many Decimal Strings at once, skipping pydicom's per-value regex validation."""
    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        return MultiValue(DSfloat, [f"{v:.2f}" for v in values])
    finally:
        config.settings.reading_validation_mode = old


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MMFUSION_SYNTH"
    return meta


def _common(ds: Dataset, header: PatientHeader, study_uid: str, for_uid: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = header.patient_name
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = header.birth_date
    ds.PatientSex = header.sex
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = header.study_date
    ds.StudyTime = "093000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "CT THORAX (synthetic)"
    ds.FrameOfReferenceUID = for_uid
    ds.Manufacturer = header.manufacturer


@dataclass(frozen=True)
class SeriesRefs:
    study_uid: str
    series_uid: str
    for_uid: str
    sop_uids: list[str]     # per slice index k (ascending z)


def write_ct_series(phantom: Phantom, header: PatientHeader, out_dir: Path) -> SeriesRefs:
    """Write one file per slice, named by SOPInstanceUID (file names carry no order)."""
    grid = phantom.grid
    study_uid = _uid(header, "study")
    series_uid = _uid(header, "ct-series")
    for_uid = _uid(header, "frame-of-reference")
    n = grid.n_slices
    sop_uids = [_uid(header, "ct", k) for k in range(n)]
    out_dir.mkdir(parents=True, exist_ok=True)
    if header.unsigned:
        intercept, dtype, lo, hi = -1024.0, np.uint16, 0, 4095
    else:
        intercept, dtype, lo, hi = 0.0, np.int16, -1024, 3071
    stored_all = np.clip(np.rint(phantom.hu - intercept), lo, hi).astype(dtype)
    for k in range(n):
        sop = sop_uids[k]
        ds = Dataset()
        ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop)
        _common(ds, header, study_uid, for_uid)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.SeriesDescription = "Thorax 5mm"
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = (n - k) if header.descending else (k + 1)
        ds.AcquisitionNumber = 1
        ds.ContentDate = header.study_date
        ds.ContentTime = "093000"
        ds.KVP = "120"
        ds.SliceThickness = _ds(grid.slice_spacing)
        ds.PixelSpacing = [_ds(grid.pixel_spacing), _ds(grid.pixel_spacing)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        z = float(grid.z[k])
        ds.ImagePositionPatient = [_ds(grid.x0), _ds(grid.y0), _ds(z)]
        ds.SliceLocation = _ds(z)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = grid.rows
        ds.Columns = grid.cols
        ds.BitsAllocated = 16
        ds.BitsStored = 12 if header.unsigned else 16
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0 if header.unsigned else 1
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
        ds.PixelData = np.ascontiguousarray(stored_all[k]).tobytes()
        with atomic_path(out_dir / f"CT.{sop}.dcm") as tmp:
            ds.save_as(tmp, enforce_file_format=True)
    return SeriesRefs(study_uid, series_uid, for_uid, sop_uids)


def write_rtstruct(phantom: Phantom, header: PatientHeader, refs: SeriesRefs,
                   out_dir: Path) -> Path:
    """Write the RTSTRUCT: every ROI's closed planar contours, referencing the CT slices."""
    sop = _uid(header, "rtstruct")
    ds = Dataset()
    ds.file_meta = _file_meta(RT_STRUCTURE_SET_STORAGE, sop)
    _common(ds, header, refs.study_uid, refs.for_uid)
    ds.PositionReferenceIndicator = ""
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = sop
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = _uid(header, "rt-series")
    ds.SeriesNumber = 3
    ds.SeriesDescription = "Structure set (synthetic)"
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "RTSTRUCT"
    ds.StructureSetDate = header.study_date
    ds.StructureSetTime = "120000"

    def image_ref(k: int) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        item.ReferencedSOPInstanceUID = refs.sop_uids[k]
        return item

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = refs.series_uid
    series_ref.ContourImageSequence = Sequence([image_ref(k) for k in range(len(refs.sop_uids))])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Mgmt (retired)
    study_ref.ReferencedSOPInstanceUID = refs.study_uid
    study_ref.RTReferencedSeriesSequence = Sequence([series_ref])
    for_ref = Dataset()
    for_ref.FrameOfReferenceUID = refs.for_uid
    for_ref.RTReferencedStudySequence = Sequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = Sequence([for_ref])

    roi_seq, contour_seq, obs_seq = [], [], []
    grid = phantom.grid
    for roi in phantom.rois:
        item = Dataset()
        item.ROINumber = roi.number
        item.ReferencedFrameOfReferenceUID = refs.for_uid
        item.ROIName = roi.name
        item.ROIGenerationAlgorithm = "MANUAL"
        roi_seq.append(item)

        contours = []
        for k in sorted(roi.polygons):
            z = float(grid.z[k])
            for poly in roi.polygons[k]:
                c = Dataset()
                c.ContourImageSequence = Sequence([image_ref(k)])
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(poly)
                pts = np.column_stack([poly, np.full(len(poly), z)])
                c.ContourData = _ds_values(pts.ravel())
                contours.append(c)
        rc = Dataset()
        rc.ROIDisplayColor = list(roi.color)
        rc.ReferencedROINumber = roi.number
        if contours:
            rc.ContourSequence = Sequence(contours)
        contour_seq.append(rc)

        obs = Dataset()
        obs.ObservationNumber = roi.number
        obs.ReferencedROINumber = roi.number
        obs.RTROIInterpretedType = roi.interpreted_type
        obs.ROIInterpreter = ""
        obs_seq.append(obs)
    ds.StructureSetROISequence = Sequence(roi_seq)
    ds.ROIContourSequence = Sequence(contour_seq)
    ds.RTROIObservationsSequence = Sequence(obs_seq)

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"RS.{sop}.dcm"
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path

