"""Mask files of the manifest route: label maps and named segmentations.

A label map (NIfTI, NRRD, MetaImage) holds integer values: 0 is background, each other
value a region. A named segmentation holds segments with names, matched against the
`rois.tumour` / `rois.node` regexes exactly as RTSTRUCT ROI names are: a 3D Slicer
segmentation (`.seg.nrrd`, or any NRRD with `Segment0_Name`; overlapping segments in
layers) read with slicerio, or a DICOM-SEG read with highdicom (`mmfusion.dicom.seg`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmfusion.errors import ImageError
from mmfusion.images.volumes import FORMATS, has_suffix, nifti_non_finite, read_information

LABEL_MAP_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
MASK_FORMATS = f"{FORMATS.replace(' or a DICOM folder', '')}, 3D Slicer .seg.nrrd or DICOM-SEG"


@dataclass
class MaskFile:
    """A mask file read into memory: a label map, or named segments (SimpleITK images)."""

    path: str
    kind: str  # "label_map" | "slicer_seg" | "dicom_seg"
    label_map: object | None = None  # SimpleITK integer image (label maps)
    segments: list[tuple[str, object]] = field(default_factory=list)  # (name, uint8 image)

    @property
    def named(self) -> bool:
        return self.kind != "label_map"

    def segment_names(self) -> list[str]:
        return [name for name, _ in self.segments]


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() == ".dcm"


def _nrrd_segment_header(path: Path) -> dict | None:
    """The NRRD header when it describes Slicer segments (`Segment0_...` keys), else None."""
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception:  # noqa: BLE001 - pynrrd raises several types; treated as "not a seg"
        return None
    return header if any(k.startswith("Segment0_") for k in header) else None


def mask_kind(path: str | Path) -> str:
    """`slicer_seg`, `dicom_seg` or `label_map`, from the file's name and first bytes."""
    p = Path(path)
    if has_suffix(p, (".nrrd", ".nhdr")) and (p.name.lower().endswith(".seg.nrrd")
                                               or _nrrd_segment_header(p) is not None):
        return "slicer_seg"
    if not has_suffix(p, LABEL_MAP_SUFFIXES) and _is_dicom(p):
        return "dicom_seg"
    return "label_map"


def header_problems(path: str) -> tuple[list[str], list[str]]:
    """(problems found by reading the header only, segment names of a named segmentation)."""
    p = Path(path)
    if not p.is_file():
        return [f"mask file not found: {path}"], []
    kind = mask_kind(p)
    try:
        if kind == "slicer_seg":
            import slicerio

            seg = slicerio.read_segmentation(str(p), skip_voxels=True)
            return [], [s.get("name", s.get("id", "")) for s in seg.get("segments", [])]
        if kind == "dicom_seg":
            from mmfusion.dicom.seg import read_seg

            return [], [s.label for s in read_seg(str(p)).segments]
        if not has_suffix(p, LABEL_MAP_SUFFIXES):
            return [f"mask {path}: not a known mask format; use {MASK_FORMATS}"], []
        reader = read_information(p)
    except Exception as err:  # noqa: BLE001 - any reader failure is this file's problem
        return [f"mask {path} is unreadable: {str(err).strip().splitlines()[-1][:200]}"], []
    size, dim = reader.GetSize(), reader.GetDimension()
    if reader.GetNumberOfComponents() > 1 or dim < 3 or (dim == 4 and size[3] > 1):
        return [f"mask {path}: a {dim}-D image of size {size} with "
                f"{reader.GetNumberOfComponents()} component(s): a 3-D label map is needed"], []
    return [], []


def read_mask(path: str, patient: str) -> MaskFile:
    """Read a mask file fully.

    Raises:
        ImageError: unreadable, not 3-D, negative or non-integer values (a probability map).
    """
    problems, _ = header_problems(path)
    if problems:
        raise ImageError(problems[0], patient=patient, path=path,
                         fix=f"give a 3-D mask: {MASK_FORMATS}")
    kind = mask_kind(path)
    if kind == "slicer_seg":
        return MaskFile(path, kind, segments=_slicer_segments(path, patient))
    if kind == "dicom_seg":
        from mmfusion.dicom.seg import read_seg

        seg = read_seg(path)
        return MaskFile(path, kind, segments=[(s.label, seg.segment_image(s.number))
                                               for s in seg.segments])
    return MaskFile(path, kind, label_map=_label_map(path, patient))


def _label_map(path: str, patient: str):
    import SimpleITK as sitk

    image = sitk.ReadImage(path)
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    array = sitk.GetArrayViewFromImage(image)
    if nifti_non_finite(path):
        raise ImageError("the mask holds NaN or infinite values", patient=patient, path=path,
                         fix="give a label map: 0 background, 1, 2, ... regions")
    if not np.issubdtype(array.dtype, np.integer):
        finite = np.isfinite(array)
        odd = array[finite & (array != np.round(array))] if finite.all() else array[~finite]
        if odd.size:
            raise ImageError(f"the mask holds non-integer values (e.g. {float(odd[0]):g}): a "
                             "probability map, not a label map", patient=patient, path=path,
                             fix="threshold it (e.g. at 0.5) into a 0/1 or integer label map")
    if array.size and array.min() < 0:
        raise ImageError(f"the mask holds negative values ({array.min():g})", patient=patient,
                         path=path, fix="give a label map: 0 background, 1, 2, ... regions")
    return image if np.issubdtype(array.dtype, np.integer) else sitk.Cast(image, sitk.sitkInt32)


def _slicer_segments(path: str, patient: str) -> list[tuple[str, object]]:
    """Each segment of a Slicer segmentation as (name, uint8 image on the file's grid)."""
    import SimpleITK as sitk
    import slicerio

    try:
        seg = slicerio.read_segmentation(path)
    except Exception as err:  # noqa: BLE001
        raise ImageError(f"unreadable Slicer segmentation: {err}", patient=patient,
                         path=path) from None
    voxels = np.asarray(seg["voxels"])  # (x, y, z) or (layers, x, y, z)
    ijk_to_lps = np.asarray(seg["ijkToLPS"], dtype=np.float64)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / np.where(spacing > 0, spacing, 1)[None, :]
    out = []
    for segment in seg.get("segments", []):
        layer = voxels[int(segment.get("layer", 0))] if voxels.ndim == 4 else voxels
        mask = (layer == int(segment.get("labelValue", 1))).astype(np.uint8)
        image = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)))
        image.SetOrigin(tuple(float(v) for v in ijk_to_lps[:3, 3]))
        image.SetSpacing(tuple(float(v) for v in spacing))
        image.SetDirection(tuple(float(v) for v in direction.ravel()))
        out.append((str(segment.get("name", segment.get("id", ""))), image))
    return out


def label_values(image) -> list[int]:
    """The distinct non-zero values of a label map, ascending."""
    import SimpleITK as sitk

    values = np.unique(sitk.GetArrayViewFromImage(image))
    return [int(v) for v in values if v != 0]


def tumour_value(mask: MaskFile, declared: int | None, patient: str, *,
                 nodes_share_file: bool, warnings: list[str]) -> int:
    """The value of the tumour in a label map: `declared` (the manifest's `tumour_label`),
    else the only non-zero value. 0/255 masks are taken and said.

    Raises:
        ImageError: an empty mask, a declared value that is absent, or several values and
            none declared.
    """
    values = label_values(mask.label_map)
    shown = ", ".join(map(str, values[:12])) + (" ..." if len(values) > 12 else "")
    if not values:
        raise ImageError("the tumour mask is empty (every voxel is 0)", patient=patient,
                         path=mask.path, fix="check the tumour column of the manifest")
    if declared is not None:
        if declared in values:
            others = [v for v in values if v != declared]
            if others and not nodes_share_file:
                warnings.append(f"tumour mask {Path(mask.path).name} holds values besides"
                                f" tumour_label {declared} ({', '.join(map(str, others))}):"
                                " ignored (name the file under nodes too to use them as nodes)")
            return declared
        if values == [255] and declared == 1:
            warnings.append(f"tumour mask {Path(mask.path).name} is stored as 0/255: 255 taken"
                            " as the tumour (tumour_label 1)")
            return 255
        raise ImageError(f"tumour_label {declared} is not in the tumour mask (values: {shown})",
                         patient=patient, path=mask.path,
                         fix="set tumour_label to one of the mask's values")
    if len(values) == 1:
        if values[0] != 1:
            warnings.append(f"tumour mask {Path(mask.path).name} is stored as 0/{values[0]}:"
                            " every non-zero voxel is the tumour")
        return values[0]
    raise ImageError(f"the tumour mask holds {len(values)} labels ({shown}) and the manifest "
                     "gives no tumour_label", patient=patient, path=mask.path,
                     fix="set tumour_label to the tumour's value (name the same file under"
                     " nodes to use the other values as nodes)")
