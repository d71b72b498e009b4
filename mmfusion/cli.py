"""`mmfusion` command line: one subcommand per pipeline stage.

Each module in `mmfusion.commands` defines `register(subparsers)`, which adds its
subcommand and sets `func` (called with the parsed args, returns an exit code). Heavy
imports stay inside the handlers so `mmfusion --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from mmfusion import __version__, commands
from mmfusion.errors import MMFusionError


def build_parser() -> argparse.ArgumentParser:
    """Parser with every subcommand found in `mmfusion.commands`."""
    parser = argparse.ArgumentParser(
        prog="mmfusion",
        description="MMFusion pipeline: DICOM-RT + tables -> lymph node metastasis classifier.",
    )
    parser.add_argument("--version", action="version", version=f"mmfusion {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):  # shared helpers, not commands
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MMFusionError as err:
        # Foreseeable bad input: one clear line, no traceback.
        print(f"mmfusion {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
