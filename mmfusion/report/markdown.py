"""The report's text: `summary.md` (Markdown) and `front_page.rst` (the reStructuredText
fragment that the Snakemake HTML report's front page, `workflow/report/workflow.rst`,
includes), both rendered from the same sections so they cannot disagree."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mmfusion.report.decision import TREAT_ALL
from mmfusion.report.summary import METRIC_COLUMNS
from mmfusion.report.thresholds import SUFFIX, THRESHOLD_METRICS

DCA_POINTS = (0.1, 0.2, 0.3, 0.4, 0.5)


@dataclass
class Table:
    """A table: header cells and rows of already formatted cells."""

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


Block = str | Table


@dataclass
class Results:
    """Everything the summary shows; optional parts are None when not computed."""

    variants: pd.DataFrame
    tests: pd.DataFrame
    oracle: pd.DataFrame | None = None
    calibration: pd.DataFrame | None = None
    confusion: pd.DataFrame | None = None
    curves: pd.DataFrame | None = None
    cohort: dict[str, int] | None = None
    folds: pd.DataFrame | None = None
    n_excluded: int | None = None
    table3: pd.DataFrame | None = None  # table3.csv; None without a Table 3 ablation
    monte_carlo: pd.DataFrame | None = None  # summary.monte_carlo_table
    repeated: pd.DataFrame | None = None  # repeated_cv.repeated_cv_table


def _f(value: object, spec: str = ".3f") -> str:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return format(v, spec) if np.isfinite(v) else "–"


def _mean_sd(row: pd.Series, col: str) -> str:
    return f"{_f(row.get(f'{col}_mean'))} ± {_f(row.get(f'{col}_sd'))}"


def _cohort_section(r: Results) -> list[Block]:
    blocks: list[Block] = []
    if r.cohort is not None:
        n, e = r.cohort["n"], r.cohort["events"]
        share = _f(e / n if n else 0, ".0%")
        text = f"{n} patients included, {e} with lymph node metastasis ({share})"
        if r.n_excluded is not None:
            text += f"; {r.n_excluded} excluded (by stage and reason in model_card.md)"
        blocks.append(text + ".")
    if r.folds is not None and len(r.folds):
        t = Table(["fold", "train n (events)", "val n (events)", "test n (events)"])
        for _, f in r.folds.iterrows():
            t.rows.append([str(f["fold"]), *[f"{f[f'{s}_n']} ({f[f'{s}_events']})"
                                            for s in ("train", "val", "test")]])
        blocks.append(t)
    return blocks


def _metrics_section(r: Results) -> list[Block]:
    t = Table(["variant", "folds", *METRIC_COLUMNS])
    for _, row in r.variants.iterrows():
        t.rows.append([str(row["variant"]), str(row["n_folds"]),
                       *[_mean_sd(row, m) for m in METRIC_COLUMNS]])
    blocks: list[Block] = [
        "Test folds scored once; checkpoints and thresholds were chosen on each fold's "
        "validation split (threshold: Youden's J). Mean ± sd over folds.", t]
    at = [f"{m}{SUFFIX}" for m in THRESHOLD_METRICS]
    if all(f"{c}_mean" in r.variants for c in at):
        t05 = Table(["variant", *THRESHOLD_METRICS])
        for _, row in r.variants.iterrows():
            t05.rows.append([str(row["variant"]), *[_mean_sd(row, c) for c in at]])
        blocks += ["The same threshold metrics at 0.5, the paper's operating point "
                   "(recall = sensitivity):", t05]
    if r.oracle is not None and len(r.oracle):
        blocks.append(f"Oracle AUC (true probabilities, demo cohort) on the same test folds: "
                      f"{_f(r.oracle['auc'].mean())} ± {_f(r.oracle['auc'].std(ddof=1))}")
    return blocks


def _tests_section(r: Results) -> list[Block]:
    if not len(r.tests):
        return ["No paired test: the reference variant is missing."]
    has_t = "ttest_p_value" in r.tests
    t = Table(["reference", "other", "n", "AUC ref", "AUC other", "diff", "DeLong p",
               *(["t-test t", "t-test p"] if has_t else [])])
    for _, x in r.tests.iterrows():
        n = "–" if pd.isna(x["n"]) else str(int(x["n"]))
        t.rows.append([str(x["reference"]), str(x["other"]), n, _f(x["auc_reference"]),
                       _f(x["auc_other"]), _f(x["difference"], "+.3f"), _f(x["p_value"], ".3g"),
                       *([_f(x["ttest_t"], ".2f"), _f(x["ttest_p_value"], ".3g")]
                         if has_t else [])])
    return ["Paired DeLong tests within each test fold, combined over folds (AUCs are means "
            "over folds; variance of the mean difference = sum of the folds' DeLong "
            "variances / K^2)" + ("; beside them the paired t-test of the per-fold AUCs "
                                  "(scipy.stats.ttest_rel, K - 1 degrees of freedom), as the "
                                  "paper reports:" if has_t else ":"), t]


def _share(value: object) -> str:
    return _f(value, ".0%")


def _repeated_section(r: Results) -> list[Block]:
    """Spread over repeats x folds x seeds, and the corrected comparison."""
    if r.repeated is None or not len(r.repeated):
        return []
    auc = r.repeated[r.repeated["metric"] == "auc"]
    first = auc.iloc[0]
    design = (f"{int(first['n_repeats'])} repeat(s) of {int(first['n_folds'])}-fold "
              f"cross-validation, {int(first['n_seeds'])} training seed(s) per fold")
    t = Table(["variant", "models", "AUC mean ± sd (repeats × folds)", "sd of repeat means",
               "seed share", "split share"])
    for _, x in auc.iterrows():
        t.rows.append([str(x["variant"]), str(int(x["n_models"])),
                       f"{_f(x['mean'])} ± {_f(x['sd'])}", _f(x["sd_repeat_means"]),
                       _share(x["share_seed"]), _share(x["share_split"])])
    blocks: list[Block] = [
        f"{design}. AUC of each fold (the mean of its seeds' recalibrated probabilities "
        "where there are several), mean ± sd over repeats × folds; the sd of the repeats' "
        "K-fold means is how much one run's headline figure moves with the split. Of the "
        "variance of a single model's AUC, the seed share is that of the training seed "
        "(same split, other seed) and the split share that of the partition (other folds "
        "and repeats); '–' where the design cannot separate them (one seed: the seed noise "
        "hides in the split share). Other metrics in repeated_cv.csv.", t]
    if "nb_p_value" in r.tests and len(r.tests):
        c = Table(["reference", "other", "J", "mean Δ AUC", "corrected t", "corrected p",
                   "t-test p", "DeLong p", "Δ variance: seed share"])
        for _, x in r.tests.iterrows():
            c.rows.append([str(x["reference"]), str(x["other"]), _f(x["nb_n"], ".0f"),
                           _f(x["nb_mean_difference"], "+.3f"), _f(x["nb_t"], ".2f"),
                           _f(x["nb_p_value"], ".3g"), _f(x.get("ttest_p_value"), ".3g"),
                           _f(x["p_value"], ".3g"), _share(x["diff_share_seed"])])
        blocks += [
            "Corrected resampled t-test (Nadeau & Bengio 2003) over the J = repeats × folds "
            "per-fold AUC differences, variance inflated to (1/J + n_test/n_train) s² with "
            "J − 1 degrees of freedom, because the folds share training patients and the "
            "repeats reuse every patient: it covers the noise of the split and of training "
            "(approximately). The paired t-test over repeat 0's folds treats those folds as "
            "independent (too small a variance); DeLong's test covers only the sampling of "
            "the test patients given the trained models, not the noise of training or of "
            "the split. The last column: the share of the per-model AUC difference's "
            "variance due to the training seed.", c]
    return blocks


def _table3_section(r: Results) -> list[Block]:
    if r.table3 is None or not len(r.table3):
        return []
    metrics = ["auc", "accuracy", "precision", "sensitivity", "specificity", "f1"]
    t = Table(["variant", "CNN", "GNN", "MMRL", "node flags", *metrics, "Δ AUC", "DeLong p"])
    for _, x in r.table3.iterrows():
        t.rows.append([str(x["variant"]), str(x["cnn"]), str(x["gnn"]), str(x["mmrl"]),
                       str(x["node_flags"]), *[_mean_sd(x, m) for m in metrics],
                       _f(x.get("auc_difference"), "+.3f"), _f(x.get("delong_p"), ".3g")])
    return ["MMFusion and its ablations, each with one component changed, trained on the "
            "same folds by the same rules (paper Table 3 shape). Mean ± sd over folds at "
            "each fold's validation-chosen threshold (at 0.5 and the paired differences of "
            "every metric in table3.csv); Δ AUC = variant − mmfusion on the same test "
            "patients, with the fold-stratified DeLong p.", t]


def _calibration_section(r: Results) -> list[Block]:
    if r.calibration is None or not len(r.calibration):
        return []
    pooled = r.calibration[r.calibration["fold"].astype(str) == "pooled"]
    t = Table(["variant", "slope", "intercept", "calibration-in-the-large", "Brier"])
    for _, c in pooled.iterrows():
        t.rows.append([str(c["variant"]), _f(c["slope"], ".2f"), _f(c["intercept"], "+.2f"),
                       _f(c["calibration_in_the_large"], "+.2f"), _f(c["brier"])])
    return ["Logistic recalibration, logit(y) ~ a + b logit(p), of the test predictions "
            "pooled over folds (slope 1 and intercept 0 = calibrated; slope < 1 = "
            "over-confident). Per fold in calibration.csv.", t]


def _confusion_section(r: Results) -> list[Block]:
    if r.confusion is None or not len(r.confusion):
        return []
    t = Table(["variant", "threshold", "TP", "FP", "TN", "FN", "sensitivity", "specificity"])
    for _, c in r.confusion.iterrows():
        counts = [str(int(c[k])) for k in ("tp", "fp", "tn", "fn")]
        t.rows.append([str(c["variant"]), str(c["threshold"]), *counts, _f(c["recall"]),
                       _f(c["specificity"])])
    return ["Test confusion matrices summed over folds, at each fold's validation-chosen "
            "threshold and at 0.5:", t]


def _decision_section(r: Results) -> list[Block]:
    if r.curves is None or not len(r.curves):
        return []
    t = Table(["curve", *[f"p_t = {p}" for p in DCA_POINTS]])
    for name, c in r.curves.groupby("curve", sort=False):
        if name == "treat none":
            continue
        by_t = dict(zip(np.round(c["threshold"], 2), c["net_benefit"], strict=True))
        t.rows.append([str(name), *[_f(by_t.get(p), "+.3f") for p in DCA_POINTS]])
    return [f"Net benefit at a few threshold probabilities (test predictions pooled over "
            f"folds; treat none = 0; a model is useful where it is above both {TREAT_ALL} "
            f"and treat none). Every threshold in decision_curve.csv.", t]


def _monte_carlo_section(r: Results) -> list[Block]:
    if r.monte_carlo is None or not len(r.monte_carlo):
        return []
    t = Table(["variant", "samples per patient", "sd mean", "sd 95th percentile", "sd max"])
    for _, row in r.monte_carlo.iterrows():
        t.rows.append([str(row["variant"]), _f(row["n_samples"], ".0f"),
                       *[_f(row[c], ".4f") for c in ("sd_mean", "sd_p95", "sd_max")]])
    return ["A diffusion variant's probability is a mean over reverse-process samples, "
            "so it carries a Monte Carlo error: the sd of a test patient's (recalibrated) "
            "probability over independent noise draws (`train.mc_replicates` of them), over "
            "the folds' test patients (metrics.json `monte_carlo`). Well below the "
            "differences between variants, it does not change a comparison; raise "
            "`model.n_samples` if it is not.", t]


def sections(r: Results) -> list[tuple[str, list[Block]]]:
    """The summary's sections in order, (title, blocks), empty ones left out."""
    out = [("Cohort", _cohort_section(r)), ("Discrimination and threshold metrics",
                                           _metrics_section(r)),
           ("Paired tests against the reference", _tests_section(r)),
           ("Repeats, training seeds and the corrected comparison", _repeated_section(r)),
           ("Table 3: ablations of MMFusion", _table3_section(r)),
           ("Monte Carlo error of diffusion scores", _monte_carlo_section(r)),
           ("Calibration", _calibration_section(r)),
           ("Confusion matrices", _confusion_section(r)),
           ("Decision curve analysis", _decision_section(r))]
    return [(title, blocks) for title, blocks in out if blocks]


def _md_table(t: Table) -> str:
    lines = ["| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(row) + " |" for row in t.rows]
    return "\n".join(lines)


def _rst_table(t: Table) -> str:
    lines = [".. list-table::", "   :header-rows: 1", ""]
    for row in [t.header, *t.rows]:
        cells = [c if c.strip() else "–" for c in row]
        lines.append(f"   * - {cells[0]}")
        lines += [f"     - {c}" for c in cells[1:]]
    return "\n".join(lines)


def to_markdown(parts: list[tuple[str, list[Block]]]) -> str:
    """Markdown of the sections (level-2 headings)."""
    out = []
    for title, blocks in parts:
        out += [f"## {title}", ""]
        for b in blocks:
            out += [_md_table(b) if isinstance(b, Table) else b, ""]
    return "\n".join(out)


def to_rst(parts: list[tuple[str, list[Block]]]) -> str:
    """reStructuredText of the sections ('-' underlined titles)."""
    out = []
    for title, blocks in parts:
        out += [title, "-" * len(title), ""]
        for b in blocks:
            out += [_rst_table(b) if isinstance(b, Table) else b.replace("`", "``"), ""]
    return "\n".join(out)


SYNTHETIC_WARNING = ("**SYNTHETIC DEMO COHORT**: every patient, image and label here was "
                     "generated by `mmfusion synth`. These numbers show that the pipeline "
                     "runs; they say nothing about any real patient or model.")


def summary_markdown(r: Results, synthetic: bool = False) -> str:
    """summary.md without the configuration table (see `config_markdown`)."""
    head = ["# MMFusion cross-fold report", ""]
    if synthetic:
        head += [f"> {SYNTHETIC_WARNING}", ""]
    return "\n".join(head) + "\n" + to_markdown(sections(r))


def front_page_rst(r: Results) -> str:
    """front_page.rst: the summary's sections for the HTML report's front page."""
    return to_rst(sections(r))


def config_markdown(config: dict) -> str:
    """The settings a reader of the summary asks about first, from the resolved config."""
    cohort, model, train = config.get("cohort", {}), config.get("model", {}), \
        config.get("train", {})
    crop, folds = config.get("crop", {}), config.get("folds", {})
    source = ("synthetic demo cohort" if cohort.get("synthetic")
              else f"label `{cohort.get('label_column')}` (positive: "
                   f"{cohort.get('positive_value')}), IDs in `{cohort.get('id_column')}`")
    rows = [
        ("cohort", source),
        ("folds", f"{folds.get('n_folds')} (validation share {folds.get('val_fraction')}, "
                  f"seed {folds.get('seed')})"),
        ("variants", ", ".join(model.get("variants", []))),
        ("backbone", f"ResNet-{model.get('depth')}, width {model.get('base_width')}, "
                     f"pretrained: {'yes' if model.get('pretrained') else 'no'}"),
        ("patches", f"tumour {crop.get('tumour_size')}, nodes {crop.get('node_sizes')} "
                    f"at {crop.get('spacing')} mm"),
        ("training", f"{train.get('epochs')} epochs, batch {train.get('batch_size')}, "
                     f"lr {train.get('lr')}, seed {train.get('seed')}"),
    ]
    return "\n".join(["", "## Configuration", "",
                      "Every setting is in `config.resolved.yaml` beside this file (the config "
                      "file given plus the schema's defaults for every key it left out).", "",
                      "| setting | value |", "|---|---|",
                      *[f"| {k} | {v} |" for k, v in rows]]) + "\n"
