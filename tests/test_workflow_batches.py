"""Cluster batch jobs of the per-patient stages (mmfusion/workflow/batches.py): regrouping the
DAG, as Snakemake does after every checkpoint and finished job, must give the same batches of
at most `group-components` patients. Run on stand-ins for Snakemake's DAG and group objects
that cache like `snakemake.jobs.GroupJobFactory`; the real thing under SLURM is
tests/test_slurm.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import snakemake.api  # noqa: F401  (the import order snakemake itself uses)
from snakemake.dag import DAG

from mmfusion.workflow import batches as workflow_batches
from mmfusion.workflow.batches import (
    VERIFIED_SOURCES,
    _update_group_components,
    install_group_components_fix,
    source_digest,
)

ORIGINAL = DAG._update_group_components  # Snakemake's own, before the fix is installed


class FakeJob:
    def __init__(self, name: str) -> None:
        self.output = [f"results/patients/{name}/convert_status.json"]
        self.name = name

    def __repr__(self) -> str:
        return self.name


class FakeGroup:
    """What the code under test uses of `snakemake.jobs.GroupJob`."""

    def __init__(self, groupid: str, jobs: frozenset) -> None:
        self.groupid, self.jobs, self.finalized = groupid, jobs, False

    def merge(self, other: FakeGroup) -> None:  # GroupJob.merge: in place
        self.jobs = self.jobs | other.jobs

    def finalize(self) -> None:
        self.finalized = True

    def __iter__(self):
        return iter(self.jobs)


class FakeFactory:
    """`GroupJobFactory`: one cached object per (group id, initial job set)."""

    def __init__(self) -> None:
        self.cache: dict = {}

    def new(self, groupid: str, jobs, resources=None) -> FakeGroup:
        key = (groupid, frozenset(jobs))
        if key not in self.cache:
            self.cache[key] = FakeGroup(groupid, frozenset(jobs))
        return self.cache[key]


def _dag(n_jobs: int, per_batch: int) -> SimpleNamespace:
    return SimpleNamespace(
        jobs=[FakeJob(f"P{i:03d}") for i in range(n_jobs)], _group={},
        group_job_factory=FakeFactory(),
        workflow=SimpleNamespace(parent_groupids={}, global_resources=None,
                                 group_settings=SimpleNamespace(
                                     group_components={"convert": per_batch})))


def _regroup(dag: SimpleNamespace, update) -> list[frozenset]:
    """`DAG.update_groups` (Snakemake 9) for unconnected jobs, then the batching `update`."""
    groups: dict = {}
    for job in dag.jobs:
        group = dag.group_job_factory.new("convert", [job])  # the job's group, from the cache
        for j in group:  # merge with previously determined groups, as update_groups does
            if j in groups:
                other = groups[j]
                other.merge(group)
                group = other
        for j in group:
            groups[j] = group
    dag._group = groups
    update(dag)
    assert all(g.finalized for g in dag._group.values())
    return sorted({g.jobs for g in dag._group.values()}, key=lambda s: min(map(repr, s)))


def test_regrouping_keeps_batches_of_the_requested_size() -> None:
    dag = _dag(12, 5)
    first = _regroup(dag, _update_group_components)
    assert [len(b) for b in first] == [5, 5, 2]
    assert frozenset().union(*first) == frozenset(dag.jobs)
    for _ in range(3):  # a checkpoint and finished jobs later: the very same batches
        assert _regroup(dag, _update_group_components) == first
    # in the order of their outputs: patients P000-P004 go together
    assert sorted(map(repr, first[0])) == [f"P{i:03d}" for i in range(5)]


@pytest.mark.parametrize("n_jobs, per_batch, sizes", [(3, 5, [3]), (10, 5, [5, 5]),
                                                        (4, 1, [1, 1, 1, 1])])
def test_batch_sizes_edge_cases(n_jobs: int, per_batch: int, sizes: list[int]) -> None:
    dag = _dag(n_jobs, per_batch)
    assert [len(b) for b in _regroup(dag, _update_group_components)] == sizes


def test_snakemakes_own_batching_re_merges_on_regrouping() -> None:
    """Why the fix exists: with Snakemake's method the second regrouping merges the batches
    again (12 patients, 5 per batch: one job of 12). When this fails, Snakemake has fixed
    it, and mmfusion/workflow/batches.py can go."""
    dag = _dag(12, 5)
    assert sorted(len(b) for b in _regroup(dag, ORIGINAL)) == [2, 5, 5]
    assert [len(b) for b in _regroup(dag, ORIGINAL)] == [12]


def test_snakemakes_method_is_the_one_the_fix_was_written_against() -> None:
    """Fails when the installed Snakemake's method changed: then re-read it, re-run
    tests/test_slurm.py, and record its digest in VERIFIED_SOURCES (or drop the fix)."""
    from importlib.metadata import version

    digest = source_digest(ORIGINAL)
    assert digest in VERIFIED_SOURCES, (version("snakemake"), digest)


def test_the_fix_is_left_out_on_an_unverified_snakemake(monkeypatch, caplog) -> None:
    monkeypatch.setattr(DAG, "_update_group_components", ORIGINAL)
    monkeypatch.setattr(workflow_batches, "VERIFIED_SOURCES", {"0" * 64: "9.0.0"})
    with caplog.at_level("WARNING", logger="mmfusion.workflow.batches"):
        assert install_group_components_fix() is False
    assert DAG._update_group_components is ORIGINAL  # unchanged: Snakemake's own
    assert "is not the one mmfusion's batching fix was verified against" in caplog.text


def test_without_group_components_snakemakes_own_method_runs(monkeypatch) -> None:
    """A run without group-components (a plain local run) takes Snakemake's code path."""
    monkeypatch.setattr(DAG, "_update_group_components", ORIGINAL)
    assert install_group_components_fix() is True
    calls = []
    monkeypatch.setattr(workflow_batches, "_ORIGINAL", [lambda dag: calls.append(dag)])
    dag = _dag(4, 2)
    dag.workflow.group_settings.group_components = {}
    _update_group_components(dag)
    assert calls == [dag]
    dag.workflow.group_settings.group_components = {"convert": 2}
    _update_group_components(dag)
    assert calls == [dag]  # with group components: the fix's own batches


def test_the_fix_installs_on_this_snakemake(monkeypatch) -> None:
    monkeypatch.setattr(DAG, "_update_group_components", ORIGINAL)
    assert install_group_components_fix() is True
    assert DAG._update_group_components is _update_group_components
    assert install_group_components_fix() is True  # idempotent
