"""Problem codes of the DICOM index: one stable code beside every human-readable message.

Code decides (convert keys on the codes only); the message explains, so rewording it is safe.
"""

from __future__ import annotations

from enum import StrEnum


class Problem(StrEnum):
    """Kinds of problem the index records; the value is written to the `problem_codes` column."""

    # one file (header reading)
    NOT_DICOM = "not_dicom"  # not a DICOM file at all
    UNREADABLE = "unreadable"  # DICOM-looking (or named .dcm) but its header cannot be read
    NO_MODALITY = "no_modality"  # neither Modality nor SOPClassUID (DICOMDIR, ...)
    TRUNCATED = "truncated"  # less data than the header declares (pixels or elements)
    NO_PATIENT_ID = "no_patient_id"  # never linked; listed in qc/exclusions.tsv
    BAD_CONTOUR_DATA = "bad_contour_data"  # non-numeric, NaN/inf, or incomplete ContourData
    MALFORMED_RTSTRUCT = "malformed_rtstruct"  # a required RTSTRUCT element missing/unusable
    MALFORMED_SEG = "malformed_seg"  # a DICOM-SEG without usable segments or references
    # objects and series that are listed but not used
    UNUSED_OBJECT = "unused_object"  # RTPLAN, RTDOSE, ... objects
    UNUSED_SERIES = "unused_series"  # image series of a modality that is not linked (MR, ...)
    # one image series
    DUPLICATE_SOP_INSTANCE = "duplicate_sop_instance"  # copied file
    SEVERAL_FRAMES_OF_REFERENCE = "several_frames_of_reference"
    MIXED_SLICE_SIZES = "mixed_slice_sizes"
    MISSING_GEOMETRY = "missing_geometry"  # no ImagePosition/Orientation/PixelSpacing
    GEOMETRY_REFUSED = "geometry_refused"  # slice sorting refused (missing slice, uneven, ...)
    DUPLICATE_POSITIONS = "duplicate_positions"
    SINGLE_SLICE = "single_slice"
    OBLIQUE = "oblique"
    UNREADABLE_IN_SERIES_FOLDER = "unreadable_in_series_folder"  # a damaged slice? refused
    STRAY_SLICE = "stray_slice"  # a lone slice elsewhere continues the series: refused
    # one patient
    SHARED_PATIENT_ID = "shared_patient_id"  # one PatientID, several PatientName/BirthDate
    PATIENT_ID_COLLISION = "patient_id_collision"  # two PatientIDs, one folder (up to case)
    # RTSTRUCT / DICOM-SEG -> CT linking
    REFERENCED_SERIES_OTHER_PATIENT = "referenced_series_other_patient"
    CONTOURS_BEYOND_SERIES = "contours_beyond_series"
    SEVERAL_FITTING_SERIES = "several_fitting_series"
    REFERENCED_SERIES_ABSENT = "referenced_series_absent"
    NO_FITTING_SERIES = "no_fitting_series"
    FOR_MISMATCH = "for_mismatch"  # linked CT's Frame of Reference is not the RTSTRUCT's


SEPARATOR = " | "  # joins messages (and codes) in one TSV cell


def add_problem(row: dict, code: Problem, message: str) -> None:
    """Record `message` and its `code` on a header record or index row (kept in step).

    A '|' in the message (e.g. from a file name) becomes '/', so the joined TSV cell splits
    back into exactly one message per code.
    """
    row["problems"].append(message.replace("|", "/"))
    row["problem_codes"].append(Problem(code))


def problem_messages(row: dict, code: Problem) -> list[str]:
    """The messages of `row` recorded with `code` (empty when it has none)."""
    return [m for m, c in zip(row["problems"], row["problem_codes"], strict=True) if c == code]
