"""Batch jobs of the per-patient stages under a cluster executor: a fix for Snakemake's
`--group-components` (used by common.smk).

The per-patient rules carry `group:` names (`convert`, `patients`), and a profile's
`group-components: [convert=25]` asks for 25 patients per cluster job. Snakemake 9 builds those
batches in `DAG._update_group_components` by merging group objects *in place*, and the
objects come from `GroupJobFactory`'s cache; the DAG is regrouped after every checkpoint and
finished job, so each regrouping merges the already merged batches again: a 12-patient stage
with `convert=5` ran as one 12-patient job instead of three (measured with the local SLURM,
tests/test_slurm.py), and on a real cohort every batch grows until the stage is one job.
The replacement below builds each batch as its own (cached, never mutated) group object, so
regrouping gives the same batches every time. Everything else is Snakemake's own code path.

It replaces a private method, so it acts only where it is needed and safe: only on a
Snakemake whose method is, line for line, the one it was written against
(`VERIFIED_SOURCES`, by the sha256 of its source; on any other Snakemake one warning says
so and the batching is Snakemake's own), and only in a run that uses `group-components`:
otherwise it calls Snakemake's own method (a plain local run takes Snakemake's code path).
The group components are not known yet when the Snakefile is parsed, so this is decided
when the DAG groups its jobs.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections import defaultdict
from typing import Any

log = logging.getLogger(__name__)

PATCHED = "_mmfusion_batches_fix"
_ORIGINAL: list[Any] = []  # Snakemake's own method, once the fix is installed
# sha256 of the source of `snakemake.dag.DAG._update_group_components` -> the Snakemake
# release it was read from; the fix below was written and tested against these
VERIFIED_SOURCES = {
    "7025e72ba0282c87ca9a6e77a659721ea54456c8e58b19a45c2d3596cc9c3ae4": "9.27.1",
}


def _update_group_components(self: Any) -> None:
    """`DAG._update_group_components` without in-place merges: chunks of at most
    `group-components` connected components per group id become one new group object.
    Without group components: Snakemake's own method."""
    from snakemake.common import group_into_chunks

    if not self.workflow.group_settings.group_components and _ORIGINAL:
        return _ORIGINAL[0](self)

    groups_by_id: dict[str, list[Any]] = defaultdict(list)
    for group in dict.fromkeys(self._group.values()):  # unique, in a stable order
        groups_by_id[group.groupid].append(group)
    for groupid, components in groups_by_id.items():
        lookup_id = self.workflow.parent_groupids.get(groupid, groupid)
        n_components = self.workflow.group_settings.group_components.get(lookup_id, 1)
        if n_components <= 1:
            continue
        # the same batches at every regrouping: components in the order of their outputs
        components.sort(key=lambda g: min((str(f) for j in g.jobs for f in j.output),
                                          default=""))
        for chunk in group_into_chunks(n_components, components):
            if len(chunk) == 1:
                continue
            jobs = frozenset().union(*(g.jobs for g in chunk))
            batch = self.group_job_factory.new(groupid, jobs, self.workflow.global_resources)
            for job in jobs:
                self._group[job] = batch
    for group in dict.fromkeys(self._group.values()):
        group.finalize()


def source_digest(method: Any) -> str | None:
    """sha256 of a method's source text (None when it cannot be read)."""
    try:
        return hashlib.sha256(inspect.getsource(method).encode()).hexdigest()
    except (OSError, TypeError):
        return None


def install_group_components_fix() -> bool:
    """Replace `DAG._update_group_components` once per process when this Snakemake's method
    is one the fix was verified against. Returns whether the fix is in place; otherwise
    nothing is changed and one warning says why."""
    import snakemake.api  # noqa: F401  (the import order snakemake itself uses)
    from snakemake.dag import DAG

    original = getattr(DAG, "_update_group_components", None)
    if original is None or not hasattr(DAG, "update_groups"):
        log.warning("this Snakemake has no DAG._update_group_components: batch jobs of "
                    "the per-patient stages are Snakemake's own")
        return False
    if getattr(original, PATCHED, False):
        return True
    if source_digest(original) not in VERIFIED_SOURCES:
        from importlib.metadata import version

        log.warning("Snakemake %s's DAG._update_group_components is not the one mmfusion's "
                    "batching fix was verified against (Snakemake %s): batch jobs of the "
                    "per-patient stages are Snakemake's own and may grow at every "
                    "regrouping; pin snakemake==%s for the fix",
                    version("snakemake"), ", ".join(VERIFIED_SOURCES.values()),
                    list(VERIFIED_SOURCES.values())[-1])
        return False
    setattr(_update_group_components, PATCHED, True)
    _ORIGINAL[:] = [original]
    DAG._update_group_components = _update_group_components
    return True
