"""Link an RTSTRUCT or DICOM-SEG index row to one CT series of the same patient.

By referenced SeriesInstanceUID first, else by Frame of Reference plus geometry (the
contours' or SEG frames' bounding box must lie within, or at least overlap, the series'
extent).
"""

from __future__ import annotations

import numpy as np

from mmfusion.dicom.problems import Problem, add_problem
from mmfusion.dicom.series_geometry import SeriesGroup

IMAGE_MODALITIES_LINKABLE = ("CT",)
_GEOMETRY_TOL_MM = 2.0


def _inside(bbox, extent) -> bool:
    lo, hi = np.asarray(bbox[0]), np.asarray(bbox[1])
    return bool(np.all(lo >= extent[0] - _GEOMETRY_TOL_MM)
                and np.all(hi <= extent[1] + _GEOMETRY_TOL_MM))


def _overlaps(bbox, extent) -> bool:
    lo, hi = np.asarray(bbox[0]), np.asarray(bbox[1])
    return bool(np.all(hi >= extent[0] - _GEOMETRY_TOL_MM)
                and np.all(lo <= extent[1] + _GEOMETRY_TOL_MM))


def link_rtstruct(row: dict, ct_by_uid: dict[str, list[SeriesGroup]],
                  series: dict[tuple[str, str, str], SeriesGroup]) -> None:
    """Set `linked_series_uid`/`link_method` of an RTSTRUCT or SEG row, or record why not.

    `row["_bbox"]` is the contours' (SEG: frames') LPS bounding box (or None); `ct_by_uid` maps a
    SeriesInstanceUID to its linkable series; `series` holds every image series.
    """
    pid = row["patient_id"]
    kind = "RTSTRUCT" if row["modality"] == "RTSTRUCT" else "DICOM-SEG"
    shapes = "contours" if kind == "RTSTRUCT" else "segmentation frames"
    if not pid:  # no PatientID (recorded): nothing to join it with, never linked
        return
    target = None
    for uid in row["referenced_series_uids"]:
        candidates = ct_by_uid.get(uid, [])
        same = [c for c in candidates if c.rows["patient_id"] == pid]
        if same:
            target, row["link_method"] = same[0], "series_uid"
            break
        if candidates:
            add_problem(row, Problem.REFERENCED_SERIES_OTHER_PATIENT,
                        f"referenced series {uid} belongs to another PatientID")
    if target is None:
        fors = set(row["referenced_for_uids"])
        candidates = [e for e in series.values()
                      if e.rows["modality"] in IMAGE_MODALITIES_LINKABLE
                      and e.rows["patient_id"] == pid
                      and e.rows["frame_of_reference_uid"] in fors and fors]
        if row.get("_bbox") is not None:
            containing = [c for c in candidates if c.bbox is not None
                          and _inside(row["_bbox"], c.bbox)]
            overlapping = [c for c in candidates if c.bbox is not None
                           and _overlaps(row["_bbox"], c.bbox)]
            if not containing and overlapping:
                add_problem(row, Problem.CONTOURS_BEYOND_SERIES,
                            f"{shapes} extend beyond the CT series linked by Frame of"
                            " Reference")
            candidates = containing or overlapping
        if len(candidates) > 1:
            candidates.sort(key=lambda c: -len(c.records))
            add_problem(row, Problem.SEVERAL_FITTING_SERIES,
                        f"{len(candidates)} CT series fit by Frame of Reference and geometry;"
                        " the largest was linked")
        if candidates:
            target, row["link_method"] = candidates[0], "frame_of_reference+geometry"
    if target is None:
        if row["referenced_series_uids"]:
            refs = ", ".join(row["referenced_series_uids"])
            add_problem(row, Problem.REFERENCED_SERIES_ABSENT,
                        f"referenced CT series absent from the archive: {refs}")
        else:
            fors = ", ".join(row["referenced_for_uids"]) or "(none)"
            add_problem(row, Problem.NO_FITTING_SERIES,
                        "no referenced series, and no CT series of this patient"
                        f" with Frame of Reference {fors} fits the {shapes}")
        return
    row["linked_series_uid"] = target.rows["series_uid"]
    ct_for = target.rows["frame_of_reference_uid"]
    if ct_for and row["referenced_for_uids"] and ct_for not in row["referenced_for_uids"]:
        add_problem(row, Problem.FOR_MISMATCH,
                    f"Frame of Reference mismatch: {kind} {', '.join(row['referenced_for_uids'])}"
                    f" vs CT {ct_for}")


link_object = link_rtstruct  # the same for a DICOM-SEG row
