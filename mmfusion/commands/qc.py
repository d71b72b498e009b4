"""`mmfusion qc`: small QC aggregations used by the workflow."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("qc", help="QC aggregations (conversion summary)")
    sub = p.add_subparsers(dest="qc_command", metavar="QC_COMMAND", required=True)
    s = sub.add_parser("convert-summary",
                       help="one TSV row per patient's conversion outcome")
    s.add_argument("--status", nargs="*", default=[], help="convert_status.json files")
    s.add_argument("--out", required=True, help="summary TSV")
    s.set_defaults(func=run_convert_summary)


def run_convert_summary(args: argparse.Namespace) -> int:
    from mmfusion.cohort.status import write_convert_summary

    n_ok = write_convert_summary(args.status, args.out)
    print(f"{n_ok} of {len(args.status)} patients converted; summary: {args.out}")
    return 0
