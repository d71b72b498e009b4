"""A manifest patient's CT: NIfTI, NRRD, MetaImage, or a folder with one DICOM CT series.

Refused (one line, naming patient and file): a missing or unreadable file, an image that is
not one 3-D scalar volume (2-D, 4-D, RGB/vector), fewer than two slices, NaN or infinite
voxels. Warned: intensities
that do not look like CT in Hounsfield units (a normalised volume, an MR, a CT stored
without its -1024 rescale), because crop windows and radiomics bins assume HU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmfusion.errors import ImageError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
FORMATS = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) or a DICOM folder"


def has_suffix(path: str | Path, suffixes: tuple[str, ...]) -> bool:
    name = str(path).lower()
    return any(name.endswith(s) for s in suffixes)


def _shape_problem(dimension: int, size: tuple[int, ...], components: int) -> str | None:
    if components > 1:
        return f"an image with {components} components per voxel (RGB or vector): a CT is scalar"
    if dimension == 4 and size[3] > 1:
        return (f"a 4-D image ({' x '.join(map(str, size))}): one 3-D CT volume per patient is"
                " needed (split the time points or channels)")
    if dimension < 3 or (dimension >= 3 and size[2] < 2):
        return f"a {dimension}-D image of size {size}: a 3-D volume of at least 2 slices is needed"
    return None


def read_information(path: str | Path):
    """SimpleITK's reader with only the header read (raises RuntimeError when unreadable)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def header_problems(path: str) -> list[str]:
    """What reading only the header finds wrong with a CT image (empty when usable)."""
    p = Path(path)
    if p.is_dir():
        return [] if any(f.is_file() for f in p.rglob("*")) else [f"image folder {path} is empty"]
    if not p.is_file():
        return [f"image file not found: {path}"]
    if not has_suffix(p, IMAGE_SUFFIXES):
        return [f"image {path}: not a known volume format; use {FORMATS}"]
    try:
        reader = read_information(p)
    except RuntimeError as err:
        return [f"image {path} is unreadable: {str(err).strip().splitlines()[-1][:200]}"]
    problem = _shape_problem(reader.GetDimension(), reader.GetSize(),
                             reader.GetNumberOfComponents())
    return [f"image {path}: {problem}"] if problem else []


def nifti_non_finite(path: str | Path) -> int:
    """NaN/infinite voxels of a float NIfTI file, counted on the file's own data: ITK's NIfTI
    reader turns NaN into 0, which would pass a broken volume or mask on unnoticed."""
    if not has_suffix(path, (".nii", ".nii.gz")):
        return 0
    import nibabel as nib

    image = nib.load(str(path))
    if image.get_data_dtype().kind != "f":
        return 0
    return int((~np.isfinite(np.asarray(image.dataobj))).sum())


def read_ct(path: str | Path, patient: str, checks=None):
    """The CT as a 3-D SimpleITK image (LPS) and warnings.

    Raises:
        ImageError: (or DicomError for a DICOM folder) the image cannot be used.
    """
    import SimpleITK as sitk

    p = Path(path)
    if p.is_dir():
        from mmfusion.dicom.headers import iter_files
        from mmfusion.dicom.series import load_ct_series

        ct = load_ct_series(iter_files(p), patient=patient, checks=checks)
        image, warnings = ct.to_sitk(), list(ct.warnings)
    else:
        problems = header_problems(str(p))
        if problems:
            raise ImageError(problems[0].replace(f" {p}", "", 1), patient=patient, path=str(p),
                             fix=f"give one 3-D CT volume: {FORMATS}")
        image, warnings = sitk.ReadImage(str(p)), []
        if image.GetDimension() == 4:  # a 4-D file with one time point
            image = image[:, :, :, 0]
    if image.GetSize()[2] < 2:
        raise ImageError(f"a single-slice image (size {image.GetSize()})", patient=patient,
                         path=str(p), fix="give the whole CT volume")
    if image.GetPixelID() not in (sitk.sitkInt16, sitk.sitkFloat32):
        array = sitk.GetArrayViewFromImage(image)
        integral = np.issubdtype(array.dtype, np.integer)
        fits = integral and array.min() >= -32768 and array.max() <= 32767
        image = sitk.Cast(image, sitk.sitkInt16 if fits else sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    bad = (int((~np.isfinite(array)).sum()) if array.dtype.kind == "f" else 0) \
        or (nifti_non_finite(p) if p.is_file() else 0)
    if bad:
        raise ImageError(f"the image holds {bad} NaN or infinite voxel(s)", patient=patient,
                         path=str(p),
                         fix="export the CT again (every voxel a number in HU)")
    warnings.extend(intensity_warnings(array))
    return image, warnings


def intensity_warnings(array: np.ndarray) -> list[str]:
    """Warnings when the intensities do not look like CT in HU (air near -1000)."""
    low, high = float(array.min()), float(array.max())
    if not np.isfinite(low) or not np.isfinite(high):
        return ["the image holds NaN or infinite values"]
    if high - low <= 20:
        return [f"intensities span only [{low:g}, {high:g}]: a normalised volume or a mask, not"
                " a CT in HU? Crop windows and radiomics bins assume HU"]
    if low > -200:
        return [f"no voxel below -200 (range [{low:g}, {high:g}]): no air, so not a CT in HU"
                " (an MR, or a CT stored without its -1024 rescale?); crop windows and"
                " radiomics bins assume HU"]
    return []
