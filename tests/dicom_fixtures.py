"""Tiny CT series and RTSTRUCTs written with pydicom, for the DICOM ingestion tests.

Geometry is explicit: `CTGrid` holds origin, spacings and direction cosines; contours
are built in patient coordinates (LPS mm) from it, so the tests know the analytic truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


@dataclass
class CTGrid:
    """A CT grid: (Z, Y, X) shape, spacing (x, y, z) mm, origin LPS, unit row/col dirs."""

    shape: tuple[int, int, int] = (20, 40, 48)
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0)
    origin: tuple[float, float, float] = (-24.0, -20.0, -20.0)
    row_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    col_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)
    patient_id: str = "PAT001"
    patient_name: str = "Doe^Jane"
    birth_date: str = "19500101"
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    for_uid: str = field(default_factory=generate_uid)
    sop_uids: list[str] = field(default_factory=list)

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    def slice_position(self, k: float) -> np.ndarray:
        return np.asarray(self.origin) + k * self.spacing[2] * self.normal

    def world(self, x: float, y: float, k: float) -> np.ndarray:
        """LPS point of continuous voxel index (x, y, k)."""
        return (self.slice_position(k) + x * self.spacing[0] * np.asarray(self.row_dir)
                + y * self.spacing[1] * np.asarray(self.col_dir))


def _base(path: Path, sop_class: str, sop_uid: str, grid: CTGrid, modality: str):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientID = grid.patient_id
    ds.PatientName = grid.patient_name
    ds.PatientBirthDate = grid.birth_date
    ds.StudyInstanceUID = grid.study_uid
    return ds


def write_ct(folder: str | Path, grid: CTGrid, *, volume: np.ndarray | None = None,
             intercept: float = -1024.0, slope: float = 1.0,
             shuffle_names: bool = True) -> list[Path]:
    """Write the grid as a CT series; pixel value of slice k defaults to 10*k (HU).

    InstanceNumber falls as the position rises and file names are shuffled, so only a
    geometric sort gets the order right.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_z, n_y, n_x = grid.shape
    if volume is None:
        volume = np.broadcast_to((np.arange(n_z) * 10.0)[:, None, None], grid.shape)
    rng = np.random.default_rng(0)
    names = rng.permutation(n_z) if shuffle_names else np.arange(n_z)
    grid.sop_uids = [generate_uid() for _ in range(n_z)]
    paths = []
    for k in range(n_z):
        path = folder / f"img_{names[k]:04d}.dcm"
        ds = _base(path, CT_SOP_CLASS, grid.sop_uids[k], grid, "CT")
        ds.SeriesInstanceUID = grid.series_uid
        ds.FrameOfReferenceUID = grid.for_uid
        ds.InstanceNumber = n_z - k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in grid.slice_position(k)]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*grid.row_dir, *grid.col_dir)]
        ds.PixelSpacing = [grid.spacing[1], grid.spacing[0]]
        ds.SliceThickness = grid.spacing[2]
        ds.Rows, ds.Columns = n_y, n_x
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        stored = np.round((np.asarray(volume[k], dtype=np.float64) - intercept) / slope)
        ds.PixelData = stored.astype(np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def circle(grid: CTGrid, centre_xy_mm: tuple[float, float], radius: float, k: float,
           n: int = 256) -> np.ndarray:
    """(n, 3) LPS polygon of a circle in the plane of slice k; centre in in-plane mm
    (offsets from the slice origin along row_dir and col_dir)."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    u = centre_xy_mm[0] + radius * np.cos(theta)
    v = centre_xy_mm[1] + radius * np.sin(theta)
    return (grid.slice_position(k)[None, :] + u[:, None] * np.asarray(grid.row_dir)[None, :]
            + v[:, None] * np.asarray(grid.col_dir)[None, :])


def sphere_contours(grid: CTGrid, centre_xy_mm, centre_k: float, radius: float):
    """Circles of a sphere on every slice it cuts (centre at slice index centre_k)."""
    out = []
    for k in range(grid.shape[0]):
        d = (k - centre_k) * grid.spacing[2]
        if abs(d) < radius:
            out.append(circle(grid, centre_xy_mm, float(np.sqrt(radius**2 - d**2)), k))
    return out


def write_rtstruct(path: str | Path, grid: CTGrid, rois: dict, *,
                   referenced_series: str | None = "", for_uid: str | None = None,
                   contour_image_refs: bool = True) -> Path:
    """Write an RTSTRUCT. `rois`: name -> list of (N, 3) arrays or (kind, array) pairs.

    referenced_series: "" = the grid's series; None = no RTReferencedStudySequence.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = _base(path, RTSTRUCT_SOP_CLASS, generate_uid(), grid, "RTSTRUCT")
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "test"
    ds.StructureSetDate = "20240101"
    ds.StructureSetTime = "120000"
    ref_for = pydicom.Dataset()
    ref_for.FrameOfReferenceUID = for_uid or grid.for_uid
    if referenced_series is not None:
        series = pydicom.Dataset()
        series.SeriesInstanceUID = referenced_series or grid.series_uid
        if contour_image_refs:
            images = []
            for uid in grid.sop_uids:
                item = pydicom.Dataset()
                item.ReferencedSOPClassUID = CT_SOP_CLASS
                item.ReferencedSOPInstanceUID = uid
                images.append(item)
            series.ContourImageSequence = Sequence(images)
        study = pydicom.Dataset()
        study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        study.ReferencedSOPInstanceUID = grid.study_uid
        study.RTReferencedSeriesSequence = Sequence([series])
        ref_for.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_for])
    ss_rois, roi_contours, observations = [], [], []
    for number, (name, contours) in enumerate(rois.items(), start=1):
        item = pydicom.Dataset()
        item.ROINumber = number * 3  # not contiguous on purpose
        item.ReferencedFrameOfReferenceUID = for_uid or grid.for_uid
        item.ROIName = name
        item.ROIGenerationAlgorithm = "MANUAL"
        ss_rois.append(item)
        rc = pydicom.Dataset()
        rc.ReferencedROINumber = number * 3
        rc.ROIDisplayColor = [255, 0, 0]
        seq = []
        for contour in contours:
            kind, points = contour if isinstance(contour, tuple) else ("CLOSED_PLANAR", contour)
            c = pydicom.Dataset()
            c.ContourGeometricType = kind
            c.NumberOfContourPoints = len(points)
            c.ContourData = [f"{v:.4f}" for v in np.asarray(points).ravel()]
            seq.append(c)
        if seq:
            rc.ContourSequence = Sequence(seq)
        roi_contours.append(rc)
        obs = pydicom.Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number * 3
        obs.RTROIInterpretedType = "GTV"
        observations.append(obs)
    ds.StructureSetROISequence = Sequence(list(reversed(ss_rois)))
    ds.ROIContourSequence = Sequence(roi_contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    ds.save_as(path, enforce_file_format=True)
    return path


def oblique_grid(**kwargs) -> CTGrid:
    """A grid rotated 25 deg about (1, 1, 1)-ish: no axis is aligned with LPS."""
    axis = np.array([1.0, 2.0, 0.5])
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(25)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return CTGrid(row_dir=tuple(rot[:, 0]), col_dir=tuple(rot[:, 1]), **kwargs)


SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def write_seg(path: str | Path, ct_paths: list[Path], masks: dict[str, np.ndarray], *,
              fractional: bool = False, references: bool = True,
              for_uid: str | None = None) -> Path:
    """Write a DICOM-SEG with highdicom over the CT slices `ct_paths`.

    masks: SegmentLabel -> (Z, Y, X) array in the grid's slice order (k ascending), bool
    for BINARY, floats in [0, 1] for FRACTIONAL (stored as 0..255). references=False
    drops ReferencedSeriesSequence and the per-frame source references, leaving only the
    Frame of Reference to link by; `for_uid` overrides the SEG's FrameOfReferenceUID.
    """
    import highdicom as hd

    sources = [pydicom.dcmread(p) for p in ct_paths]
    for ds in sources:  # type-2 attributes highdicom copies that `write_ct` leaves out
        for keyword in ("PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
                        "StudyID", "AccessionNumber", "SeriesNumber"):
            if keyword not in ds:
                setattr(ds, keyword, None)
    normal = np.cross(*(np.asarray(sources[0].ImageOrientationPatient, float).reshape(2, 3)))
    sources.sort(key=lambda d: float(np.dot(np.asarray(d.ImagePositionPatient, float), normal)))
    pixels = np.stack(list(masks.values()), axis=-1)
    pixels = pixels.astype(np.float32) if fractional else pixels.astype(bool)
    category = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")
    kind = hd.sr.CodedConcept("108369006", "SCT", "Neoplasm")
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i, segment_label=label, segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i, label in enumerate(masks, start=1)]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels,
        segmentation_type="FRACTIONAL" if fractional else "BINARY",
        segment_descriptions=descriptions, series_instance_uid=generate_uid(),
        series_number=99, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="mmfusion tests", manufacturer_model_name="dicom_fixtures",
        software_versions="0", device_serial_number="0")
    if not references:
        del seg.ReferencedSeriesSequence
        for frame in seg.PerFrameFunctionalGroupsSequence:
            if "DerivationImageSequence" in frame:
                del frame.DerivationImageSequence
    if for_uid:
        seg.FrameOfReferenceUID = for_uid
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def sphere_mask(grid: CTGrid, centre_xy_mm, centre_k: float, radius: float) -> np.ndarray:
    """(Z, Y, X) bool ball on the grid (voxel centres within `radius` mm)."""
    n_z, n_y, n_x = grid.shape
    k, y, x = np.meshgrid(np.arange(n_z), np.arange(n_y), np.arange(n_x), indexing="ij")
    d2 = (((x * grid.spacing[0] - centre_xy_mm[0]) ** 2)
          + ((y * grid.spacing[1] - centre_xy_mm[1]) ** 2)
          + (((k - centre_k) * grid.spacing[2]) ** 2))
    return d2 <= radius ** 2
