"""`mmfusion convert`: one patient's CT + RTSTRUCT or DICOM-SEG (or the manifest's NIfTI/NRRD/...
image and masks) -> ct.nii.gz, gtv_t/gtv_n.nii.gz, rois.json.

Two forms:
    mmfusion convert PATIENT_DICOM_DIR --out OUT_DIR [--tumour-roi REGEX] [--node-roi REGEX]
    mmfusion convert --index index.tsv --patient ID [--dicom-root DIR] --out OUT_DIR [...]
    mmfusion convert --manifest-index manifest_index.tsv --patient ID --out OUT_DIR [...]
The index lists files relative to the DICOM root and records the root relative to the
index file's own folder; --dicom-root overrides that (the workflow passes cohort.dicom_root).
With --status-out FILE a foreseeable refusal is recorded there ("excluded") and the exit
code is 0, so a workflow can go on with the other patients.
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert one patient's CT series and RTSTRUCT or DICOM-SEG (or manifest"
        " images) to NIfTI volumes/masks",
        description="Write OUT_DIR/ct.nii.gz (HU), gtv_t.nii.gz (0/1), gtv_n.nii.gz (uint16"
        " label map, one label per node, largest first) and rois.json.",
    )
    parser.add_argument("patient_dir", metavar="PATIENT_DICOM_DIR", nargs="?",
                        help="folder holding one patient's CT series and RTSTRUCT")
    parser.add_argument("--index", help="index TSV from `mmfusion index` (instead of a folder)")
    parser.add_argument("--patient", help="patient (sanitised or raw PatientID) with --index"
                        " or --manifest-index")
    parser.add_argument("--manifest-index", help="manifest index TSV from `mmfusion index"
                        " --manifest`: a patient listed there is converted from its NIfTI/NRRD/"
                        "... image and masks (with --index too, patients of either)")
    parser.add_argument("--dicom-root", metavar="DIR",
                        help="with --index: the folder that was indexed (the index's files are"
                        " relative to it); default: the root the index records, relative to"
                        " the index file's folder, so needed only when the index or the"
                        " archive moved")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--tumour-roi", help="regex for the GTV-T ROI name (case-insensitive,"
                        " full match); default: rois.tumour of the config schema")
    parser.add_argument("--node-roi", help="regex for GTV-N ROI names; default: rois.node of"
                        " the config schema")
    parser.add_argument("--plane-tolerance", type=float,
                        help="max contour-to-slice distance as a fraction of the slice spacing"
                        " (default: convert.plane_tolerance of the config schema)")
    parser.add_argument("--missing-gap-factor", type=float,
                        help="a slice gap above this x the median spacing is a missing slice"
                        " (default: convert.missing_gap_factor of the config schema)")
    parser.add_argument("--uneven-tolerance", type=float,
                        help="largest relative deviation of slice gaps from the median before"
                        " the series is refused (default: convert.uneven_tolerance of the"
                        " config schema)")
    parser.add_argument("--status-out", help="write a status JSON here; refusals exit 0")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmfusion.dicom.convert import (
        ConvertSettings,
        convert_patient,
        inputs_from_folder,
        inputs_from_index,
    )
    from mmfusion.errors import ConfigError, MMFusionError
    from mmfusion.io import write_text_atomic

    indexed = bool(args.index or args.manifest_index)
    if bool(args.patient_dir) == indexed:
        raise SystemExit("mmfusion convert: give either PATIENT_DICOM_DIR or --index /"
                         " --manifest-index with --patient")
    if indexed and not args.patient:
        raise SystemExit("mmfusion convert: --index / --manifest-index need --patient")
    if args.dicom_root and not args.index:
        raise SystemExit("mmfusion convert: --dicom-root goes with --index")
    rois = {k: v for k, v in (("tumour", args.tumour_roi), ("node", args.node_roi)) if v}
    convert = {k: v for k, v in (("plane_tolerance", args.plane_tolerance),
                                 ("missing_gap_factor", args.missing_gap_factor),
                                 ("uneven_tolerance", args.uneven_tolerance)) if v is not None}
    patient = args.patient or args.patient_dir
    # a bad setting (e.g. an invalid ROI regex) is the user's config, not this patient's
    # data: it stops the job instead of excluding every patient
    settings = ConvertSettings.from_config(rois, convert)
    manifest_row = _manifest_row(args.manifest_index, args.patient)
    if manifest_row is None and args.manifest_index and not args.index:
        raise SystemExit(f"mmfusion convert: patient {args.patient!r} is not in"
                         f" {args.manifest_index}")
    try:
        if manifest_row is not None:
            summary = _convert_manifest(manifest_row, args, settings)
            return _report(summary, args)
        if args.index:
            inputs = inputs_from_index(args.index, args.patient, settings, args.dicom_root)
        else:
            inputs = inputs_from_folder(args.patient_dir, settings)
        patient = inputs.patient_id
        summary = convert_patient(inputs, args.out, settings)
    except ConfigError:  # no usable DICOM root: the run's setting, not this patient's data
        raise
    except MMFusionError as err:
        if not args.status_out:
            raise
        pid = err.patient or patient
        log.warning("patient %s excluded: %s", pid, err)
        status = {"patient_id": pid, "status": "excluded", "reason": str(err), "warnings": []}
        write_text_atomic(args.status_out, json.dumps(status, indent=2) + "\n")
        return 0
    return _report(summary, args)


def _manifest_row(manifest_index: str | None, patient: str | None) -> dict | None:
    """The manifest index row of `patient` (sanitised or raw ID), or None."""
    if not manifest_index:
        return None
    from mmfusion.images.manifest import read_manifest_index

    rows = [r for r in read_manifest_index(manifest_index)
            if patient in (r["patient"], r["patient_id"])]
    return rows[0] if rows else None


def _convert_manifest(row: dict, args: argparse.Namespace, settings) -> dict:
    from mmfusion.images.convert import convert_manifest_row

    return convert_manifest_row(row, args.out, settings)


def _report(summary: dict, args: argparse.Namespace) -> int:
    from mmfusion.io import write_text_atomic

    for warning in summary["warnings"]:
        log.warning("%s: %s", summary["patient_id"], warning)
    log.info("%s: GTV-T %d voxels (%.1f cm3), %d node(s) -> %s", summary["patient_id"],
             summary["tumour"]["voxels"], summary["tumour"]["volume_mm3"] / 1000,
             len(summary["nodes"]), args.out)
    if args.status_out:
        status = {"patient_id": summary["patient_id"], "status": "ok", "reason": "",
                  "warnings": summary["warnings"]}
        write_text_atomic(args.status_out, json.dumps(status, indent=2) + "\n")
    return 0
