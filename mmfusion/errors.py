"""Exception types for foreseeable bad input; the CLI prints them without a traceback."""

from __future__ import annotations


class MMFusionError(Exception):
    """Base class: a problem with the user's data or config, with a suggested fix."""

    def __init__(
        self,
        message: str,
        *,
        patient: str | None = None,
        path: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.patient = patient
        self.path = path
        self.fix = fix
        parts = []
        if patient is not None:
            parts.append(f"patient {patient}")
        if path is not None:
            parts.append(f"file {path}")
        prefix = f"[{', '.join(parts)}] " if parts else ""
        text = prefix + message
        if fix:
            text += f" Potential fix: {fix}"
        super().__init__(text)


class ConfigError(MMFusionError):
    """The configuration is invalid or inconsistent."""


class DicomError(MMFusionError):
    """A DICOM file or series cannot be used as it is."""


class TableError(MMFusionError):
    """A clinical or hematology table is malformed."""


class ImageError(MMFusionError):
    """An image or mask file of the manifest route (NIfTI, NRRD, MetaImage, Slicer
    segmentation, DICOM-SEG) cannot be used as it is."""
