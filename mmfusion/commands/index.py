"""`mmfusion index DICOM_ROOT --out index.tsv`: crawl any layout, link RTSTRUCTs to CT series."""

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
    parser.add_argument("dicom_root", metavar="DICOM_ROOT", help="folder to crawl")
    parser.add_argument("--out", required=True, help="index TSV to write")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="header-reading processes (default: min(4, CPUs))")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mmfusion.dicom.index import index_dicom
    from mmfusion.dicom.index_io import write_index

    rows = index_dicom(args.dicom_root, workers=args.workers, progress=not args.no_progress)
    write_index(rows, args.out)
    linked = {r["patient"] for r in rows if r["modality"] == "RTSTRUCT" and r["linked_series_uid"]}
    with_problems = sum(1 for r in rows if r["problems"])
    log.info("indexed %d rows: %d patient(s) with a CT linked to an RTSTRUCT; %d row(s) with"
             " problems -> %s", len(rows), len(linked), with_problems, args.out)
    for row in rows:
        if row["problems"] and row["modality"] in ("CT", "RTSTRUCT"):
            log.warning("%s %s %s: %s", row["patient_id"] or "(no PatientID)", row["modality"],
                        row["files"][0] if row["files"] else "",
                        "; ".join(row["problems"])[:500])
    return 0
