"""`mmfusion index [DICOM_ROOT] [--manifest M] --out index.tsv`: crawl any DICOM layout and
link RTSTRUCTs to CT series; index a manifest of NIfTI/NRRD/... images and masks beside it."""

from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index", help="crawl a DICOM folder and write the series/RTSTRUCT index (TSV)",
        description="Read DICOM headers under DICOM_ROOT (any folder layout; non-DICOM files"
        " are listed and skipped), group them into series and RT objects, link every"
        " RTSTRUCT to its CT series, and write one TSV row per series / object. Files are"
        " recorded relative to DICOM_ROOT, and DICOM_ROOT relative to the index's folder"
        " (`mmfusion convert --index` finds it there, or takes --dicom-root); no patient"
        " name, birth date or other header text beyond PatientID, UIDs, geometry, ROI names"
        " and the structure set date is written.",
    )
    parser.add_argument("dicom_root", metavar="DICOM_ROOT", nargs="?", default="",
                        help="folder to crawl (none: the index lists no DICOM, e.g. a cohort"
                        " given only by --manifest)")
    parser.add_argument("--out", required=True, help="index TSV to write")
    parser.add_argument("--manifest", default="",
                        help="CSV/TSV naming each patient's image and masks (README: \"Your"
                        " images are not DICOM-RT\"); its patients are indexed into"
                        " --manifest-out")
    parser.add_argument("--manifest-out",
                        help="manifest index TSV to write (default: manifest_index.tsv beside"
                        " --out, when --manifest is given; written empty without --manifest)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="header-reading processes (default: min(4, CPUs))")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmfusion.dicom.index import index_dicom, is_mask_row
    from mmfusion.dicom.index_io import write_index
    from mmfusion.images.manifest import index_manifest, write_manifest_index

    rows = (index_dicom(args.dicom_root, workers=args.workers, progress=not args.no_progress)
            if args.dicom_root else [])
    write_index(rows, args.out)
    manifest_out = args.manifest_out or (
        os.path.join(os.path.dirname(args.out), "manifest_index.tsv") if args.manifest else "")
    if manifest_out:
        manifest_rows = index_manifest(args.manifest) if args.manifest else []
        write_manifest_index(manifest_rows, manifest_out)
        dicom_ids = {r["patient"] for r in rows if is_mask_row(r) and r["linked_series_uid"]}
        log.info("manifest: %d patient(s), %d with problems -> %s", len(manifest_rows),
                 sum(1 for r in manifest_rows if r["problems"]), manifest_out)
        for row in manifest_rows:
            for problem in row["problems"]:
                log.warning("%s: %s", row["patient_id"], problem)
            if row["patient"] in dicom_ids:
                log.warning("%s: in the manifest and in the DICOM archive (preflight refuses"
                            " this: a patient comes from one of them)", row["patient_id"])
    linked = {r["patient"] for r in rows if is_mask_row(r) and r["linked_series_uid"]}
    with_problems = sum(1 for r in rows if r["problems"])
    log.info("indexed %d rows: %d patient(s) with a CT linked to an RTSTRUCT or DICOM-SEG; %d"
             " row(s) with"
             " problems -> %s", len(rows), len(linked), with_problems, args.out)
    for row in rows:
        if row["problems"] and (row["modality"] == "CT" or is_mask_row(row)):
            log.warning("%s %s %s: %s", row["patient_id"] or "(no PatientID)", row["modality"],
                        row["files"][0] if row["files"] else "",
                        "; ".join(row["problems"])[:500])
    return 0
