#!/usr/bin/env python3
"""The conda envs (envs/*.yaml) proven by proxy: no conda channel is reachable here, so each
env is stood in for by a plain venv of the PyPI equivalents that envs/pip-equivalents.yaml
maps its packages to.

    python workflow/scripts/conda_proxy.py check   # fast: pure YAML + AST, installs nothing
    python workflow/scripts/conda_proxy.py run     # minutes: venvs + the workflow

`check` fails when
  - an env file gains, loses or re-specs a package that the mapping does not cover exactly
    (both directions), an env file has no mapping or a mapping no env file, or a rule's
    `conda:` names an env the mapping does not know;
  - a PyPI spec is not the conda spec (conda `=X` is X.*) and is not a pin inside it;
  - a third-party module imported by the code that an env's rules run is provided by no
    package of that env (static: the AST of mmfusion/commands/<cmd>.py for every command of
    the env's rules, following mmfusion.* imports transitively, function-local ones
    included, plus what `python -m mmfusion` imports at start-up);
  - a package of an env is imported by none of those modules and does not say why
    (`indirect`), or an allow-list entry is stale.
`run` then, per env, builds a fresh venv .proxy-envs/<env> with exactly the mapped PyPI
specs, imports every needed module there (and checks that packages_distributions gives
each to the package the mapping says), checks each installed version against the conda
spec, and runs every rule of the env on a tiny synthetic cohort (12 patients; a few of them
copied as the external cohort of bundle.smk) with the main venv's snakemake and that venv's
bin first on PATH: preprocess rules first, then the train rules (Snakemake reruns nothing
already done), then cache_features with model.freeze_backbone. A `.pth` probe in each proxy
venv records every python started there; each job of each phase must be matched by a
record of the phase's venv with the job's command, no python may see the main venv, and
every rule of each env must have run.

Downloaded wheels are kept in ~/.cache/mmfusion-conda-proxy/wheels/<env> (the mirror's
answers are not cacheable: without it every run fetches ~3 GB of torch + CUDA wheels); pip
still resolves against the index each run. `--no-wheelhouse` installs straight from it.

Stdlib + PyYAML; run it with the main venv's python (its snakemake runs the workflow).

The code lives in sibling modules, one responsibility each: conda_proxy_specs.py (specs and
the mapping), conda_proxy_check.py (rules, static imports, `check`), conda_proxy_venv.py
(building and inspecting a venv), conda_proxy_run.py (`run`). This file is the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conda_proxy_check import CheckResult, run_check
from conda_proxy_run import ENV_ORDER, PROXY_ROOT, run_proxy
from conda_proxy_specs import DEFAULT_MAPPING, ProxyError, conda_to_pep440, log, satisfies
from conda_proxy_venv import default_wheelhouse

__all__ = ["CheckResult", "ProxyError", "conda_to_pep440", "main", "run_check", "run_proxy",
           "satisfies"]


def main(argv: list[str] | None = None) -> int:
    """The command line: `check` or `run`; 0 when the proxy passes, 1 on a finding."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["check", "run"])
    parser.add_argument("--mapping", type=Path, default=DEFAULT_MAPPING)
    parser.add_argument("--envs-dir", type=Path, default=None,
                        help="read the env files from here instead of the mapping's paths")
    parser.add_argument("--root", type=Path, default=PROXY_ROOT,
                        help="where the proxy venvs go (default .proxy-envs/)")
    parser.add_argument("--env", action="append", choices=ENV_ORDER,
                        help="only this env (repeatable; train needs preprocess's outputs)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the tiny run's folder (ROOT/work)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a proxy venv built from the same requirements (a fresh "
                        "venv is the proof; this only speeds up reruns)")
    parser.add_argument("--wheelhouse", type=Path, default=None,
                        help="keep downloaded wheels here between runs (default: "
                        "$MMFUSION_PROXY_WHEELS or ~/.cache/mmfusion-conda-proxy/wheels)")
    parser.add_argument("--no-wheelhouse", action="store_true",
                        help="plain `pip install` from the index (downloads every time)")
    args = parser.parse_args(argv)
    try:
        if args.action == "check":
            result = run_check(args.mapping, args.envs_dir)
            for line in result.report:
                log(line)
            if result.problems:
                log("conda proxy check FAILED:\n  " + "\n  ".join(result.problems))
                return 1
            log("conda proxy check passed")
            return 0
        envs = tuple(e for e in ENV_ORDER if e in (args.env or ENV_ORDER))
        if "train" in envs and "preprocess" not in envs:
            parser.error("--env train needs --env preprocess too (train runs on its outputs)")
        wheelhouse = None if args.no_wheelhouse else (args.wheelhouse or default_wheelhouse())
        run_proxy(args.mapping, args.envs_dir, args.root, envs, args.keep_work, args.reuse,
                  wheelhouse)
        return 0
    except ProxyError as err:
        log(f"conda proxy FAILED: {err}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
