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
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

PATCHED = "_mmfusion_batches_fix"


def _update_group_components(self: Any) -> None:
    """`DAG._update_group_components` without in-place merges: chunks of at most
    `group-components` connected components per group id become one new group object."""
    from snakemake.common import group_into_chunks

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


def install_group_components_fix() -> bool:
    """Replace `DAG._update_group_components` once per process. Returns False (and
    changes nothing) when this Snakemake does not have the method this fix replaces: its
    batching is then Snakemake's own, and tests/test_workflow_batches.py says so."""
    import snakemake.api  # noqa: F401  (the import order snakemake itself uses)
    from snakemake.dag import DAG

    original = getattr(DAG, "_update_group_components", None)
    if original is None or not hasattr(DAG, "update_groups"):
        return False
    if getattr(original, PATCHED, False):
        return True
    setattr(_update_group_components, PATCHED, True)
    DAG._update_group_components = _update_group_components
    return True
