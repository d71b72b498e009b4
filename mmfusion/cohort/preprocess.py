"""In-fold preprocessing: everything learned from data is learned on training rows only.

`FoldPreprocessor(spec, settings).fit(train_df)` learns, per group of the feature spec:
imputation values, scaling, and — for radiomics — the selected features (variance filter,
correlation filter, then mRMR or L1-logistic down to a configured count; the reference
used 32 tumour and 19 node features). `.transform(df)` returns float32 arrays keyed by
group: `clinical`, `hematology`, `radiomics_tumour`, `radiomics_node`. Fitted state ends
in `_` (scikit-learn style). Categorical levels come from the spec (config), not the data.

Output columns, in order (`feature_names_out_`):
  clinical / hematology: scaled numeric columns, then one-hot `{column}={level}` (a
  missing category is all zeros);
  radiomics_tumour: selected features, scaled;
  radiomics_node: selected features, scaled (patients without nodes: imputed), then the
  `gtvn_present` flag and the `gtvn_count` node count, unscaled.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mmfusion.cohort.tables import cell_text
from mmfusion.errors import ConfigError, TableError
from mmfusion.settings import check_choice, schema_defaults

GROUPS = ("clinical", "hematology", "radiomics_tumour", "radiomics_node")
RADIOMICS = ("radiomics_tumour", "radiomics_node")
IMPUTATIONS = ("median", "mean")
SCALINGS = ("standard", "robust", "none")
SELECTIONS = ("mrmr", "l1", "none")
STATE_FORMAT = "mmfusion.FoldPreprocessor"  # `to_dict` / `from_dict`
STATE_VERSION = 1


@dataclass(frozen=True)
@schema_defaults("preprocess")
class PreprocessSettings:
    """Settings of in-fold preprocessing (config section `preprocess`; defaults: the schema).

    Attributes:
        log_skew: log-transform a numeric column (any group) whose training values are all
            positive and whose training-row skewness exceeds this (laboratory values such
            as CEA, SCC-Ag, CRP and radiomics volumes are log-normal); 0 = never.
        impute: numeric imputation, `median` or `mean` of the training rows.
        scaling: `standard` (mean/sd), `robust` (median/IQR) or `none`.
        variance_threshold: drop radiomics features whose variance after min-max scaling
            to [0, 1] on the training rows is at most this.
        correlation_threshold: of two radiomics features with |Pearson r| above this on
            the training rows, keep the more relevant one.
        selection: `mrmr` (F-statistic relevance / mean |r| redundancy, deterministic),
            `l1` (L1-logistic, ranked by |coefficient|) or `none` (keep all filtered).
        n_tumour: radiomics_tumour features kept.
        n_node: radiomics_node features kept.
        seed: random seed of the L1 solver.
    """

    log_skew: float
    impute: str
    scaling: str
    variance_threshold: float
    correlation_threshold: float
    selection: str
    n_tumour: int
    n_node: int
    seed: int

    def __post_init__(self) -> None:
        check_choice("preprocess.impute", self.impute, IMPUTATIONS)
        check_choice("preprocess.scaling", self.scaling, SCALINGS)
        check_choice("preprocess.selection", self.selection, SELECTIONS)
        if not 0 < self.correlation_threshold <= 1:
            raise ConfigError("preprocess.correlation_threshold must be in (0, 1]")
        if self.log_skew < 0:
            raise ConfigError("preprocess.log_skew must be >= 0 (0 = no log transform)")
        if self.n_tumour < 1 or self.n_node < 1:
            raise ConfigError("preprocess.n_tumour and n_node must be positive")



def _f_statistic(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One-way ANOVA F of each column of x (n, d) against a binary label (finite, >= 0)."""
    from sklearn.feature_selection import f_classif

    with np.errstate(divide="ignore", invalid="ignore"):
        f, _ = f_classif(x, y)
    return np.nan_to_num(f, nan=0.0, posinf=1e12)


def _skewness(x: np.ndarray) -> np.ndarray:
    """Sample skewness of each column of x (n, d), ignoring NaNs (0 for constant columns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        centred = x - np.nanmean(x, axis=0)
        sd = np.sqrt(np.nanmean(centred**2, axis=0))
        skew = np.nanmean(centred**3, axis=0) / np.where(sd > 0, sd, np.inf) ** 3
    return np.nan_to_num(skew, nan=0.0)


def _seen(values: pd.Series, levels: list[str]) -> list[str]:
    """The declared `levels` that occur in `values` (compared as `cell_text`)."""
    present = {cell_text(v) for v in values.dropna()}
    return [lv for lv in levels if cell_text(lv) in present]


def _corr(x: np.ndarray) -> np.ndarray:
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return np.abs(z.T @ z / max(len(x), 1))


class FoldPreprocessor:
    """Imputation, scaling, one-hot encoding and radiomics selection fitted on one fold.

    Args:
        spec: the cohort's `feature_spec.json` content.
        settings: preprocessing settings (or a config section mapping).
    """

    def __init__(self, spec: Mapping[str, Any],
                 settings: PreprocessSettings | Mapping[str, Any] | None = None) -> None:
        self.spec = spec
        self.settings = (settings if isinstance(settings, PreprocessSettings)
                         else PreprocessSettings.from_config(settings))

    # -- helpers ---------------------------------------------------------------------
    def _numeric(self, group: str) -> list[str]:
        g = self.spec["groups"][group]
        return list(g["numeric"]) if isinstance(g, Mapping) else list(g)

    def _categorical(self, group: str) -> dict[str, list[str]]:
        g = self.spec["groups"][group]
        return {k: [str(v) for v in lv] for k, lv in g.get("categorical", {}).items()} \
            if isinstance(g, Mapping) else {}

    def _flags(self, group: str) -> list[str]:
        return list(self.spec.get("flags", {}).get(group, []))

    def _fit_log(self, x: np.ndarray) -> np.ndarray:
        """Per-column floor for log-transformed columns (NaN = not transformed), from the
        given rows: positive, right-skewed columns; the floor (half the smallest training
        value) keeps unseen zero or negative values finite."""
        floor = np.full(x.shape[1], np.nan)
        if self.settings.log_skew <= 0 or x.shape[1] == 0:
            return floor
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lowest = np.nanmin(x, axis=0)
        chosen = (lowest > 0) & (_skewness(x) > self.settings.log_skew)
        floor[chosen] = lowest[chosen] / 2.0
        return floor

    @staticmethod
    def _apply_log(x: np.ndarray, floor: np.ndarray) -> np.ndarray:
        cols = ~np.isnan(floor)
        if not cols.any():
            return x
        x = x.copy()
        x[:, cols] = np.log(np.maximum(x[:, cols], floor[cols]))  # NaN stays NaN
        return x

    def _fit_scaler(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fill, centre, scale) of columns of x (n, d) with NaNs, from the given rows."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns -> filled below
            fill = (np.nanmedian(x, axis=0) if self.settings.impute == "median"
                    else np.nanmean(x, axis=0))
        fill = np.nan_to_num(fill, nan=0.0)
        xf = np.where(np.isnan(x), fill, x)
        if self.settings.scaling == "standard":
            centre, scale = xf.mean(axis=0), xf.std(axis=0)
        elif self.settings.scaling == "robust":
            centre = np.median(xf, axis=0)
            q75, q25 = np.percentile(xf, [75, 25], axis=0)
            scale = q75 - q25
        else:
            centre, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
        scale = np.where(scale > 0, scale, 1.0)
        return fill, centre, scale

    def _select(self, x: np.ndarray, y: np.ndarray, names: list[str], k: int) -> list[str]:
        """Variance filter, correlation filter, then mRMR / L1 down to k features."""
        s = self.settings
        lo, hi = x.min(axis=0), x.max(axis=0)
        rng = np.where(hi > lo, hi - lo, 1.0)
        var = ((x - lo) / rng).var(axis=0)
        keep = np.flatnonzero((var > s.variance_threshold) & (hi > lo))
        if keep.size == 0:
            return []
        relevance = _f_statistic(x[:, keep], y)
        order = keep[np.argsort(-relevance, kind="stable")]
        corr = _corr(x[:, order])
        kept: list[int] = []
        for j in range(len(order)):
            if all(corr[j, i] <= s.correlation_threshold for i in kept):
                kept.append(j)
        cand = order[kept]
        if s.selection == "none" or len(cand) <= k:
            chosen = list(cand[:k]) if s.selection != "none" else list(cand)
        elif s.selection == "mrmr":
            chosen = self._mrmr(x[:, cand], y, k)
            chosen = [int(cand[i]) for i in chosen]
        else:
            chosen = [int(cand[i]) for i in self._l1(x[:, cand], y, k)]
        return [names[i] for i in chosen]

    @staticmethod
    def _mrmr(x: np.ndarray, y: np.ndarray, k: int) -> list[int]:
        """Greedy mRMR (F-test relevance divided by mean |r| to the chosen: FCQ)."""
        rel = _f_statistic(x, y)
        corr = _corr(x)
        chosen = [int(np.argmax(rel))]
        while len(chosen) < k:
            red = corr[:, chosen].mean(axis=1)
            score = rel / np.maximum(red, 1e-6)
            score[chosen] = -np.inf
            chosen.append(int(np.argmax(score)))
        return chosen

    def _l1(self, x: np.ndarray, y: np.ndarray, k: int) -> list[int]:
        """L1-logistic on standardised features; smallest C with >= k non-zero weights."""
        from sklearn.linear_model import LogisticRegression

        z = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        coef = np.zeros(x.shape[1])
        for c in np.logspace(-3, 2, 26):
            model = LogisticRegression(l1_ratio=1.0, C=c, solver="liblinear",
                                       random_state=self.settings.seed, max_iter=1000)
            coef = np.abs(model.fit(z, y).coef_[0])
            if (coef > 0).sum() >= k:
                break
        return [int(i) for i in np.argsort(-coef, kind="stable")[:k]]

    # -- API ---------------------------------------------------------------------------
    def fit(self, train_df: pd.DataFrame) -> FoldPreprocessor:
        """Learn every parameter from `train_df` (training rows of one fold) only."""
        label = self.spec.get("label_column", "label")
        if label not in train_df.columns:
            raise TableError(f"training rows have no {label!r} column")
        y = train_df[label].to_numpy(dtype=int)
        if len(np.unique(y)) < 2:
            raise TableError("training rows hold a single class; cannot select features",
                             fix="use stratified folds (mmfusion cohort folds)")
        self.columns_: dict[str, list[str]] = {}
        self.levels_: dict[str, dict[str, list[str]]] = {}
        self.fill_: dict[str, np.ndarray] = {}
        self.centre_: dict[str, np.ndarray] = {}
        self.scale_: dict[str, np.ndarray] = {}
        self.log_floor_: dict[str, np.ndarray] = {}
        self.levels_seen_: dict[str, dict[str, list[str]]] = {}
        for group in GROUPS:
            if group in RADIOMICS:
                names = self._numeric(group)
                x = train_df[names].to_numpy(dtype=float) if names else np.zeros((len(y), 0))
                x = self._apply_log(x, self._fit_log(x))
                fill, _, _ = self._fit_scaler(x)
                xf = np.where(np.isnan(x), fill, x)
                k = self.settings.n_tumour if group == "radiomics_tumour" else self.settings.n_node
                cols = self._select(xf, y, names, k) if names else []
            else:
                cols = self._numeric(group)
            x = train_df[cols].to_numpy(dtype=float) if cols else np.zeros((len(y), 0))
            self.columns_[group] = cols
            self.log_floor_[group] = self._fit_log(x)
            x = self._apply_log(x, self.log_floor_[group])
            self.fill_[group], self.centre_[group], self.scale_[group] = self._fit_scaler(x)
            self.levels_[group] = self._categorical(group)
            # levels present in the training rows (a declared level never seen there has an
            # untrained one-hot column: `mmfusion predict` warns about it)
            self.levels_seen_[group] = {col: _seen(train_df[col], lvs)
                                        for col, lvs in self.levels_[group].items()}
        self.feature_names_out_ = {
            g: [*self.columns_[g],
                *(f"{c}={lv}" for c, lvs in self.levels_[g].items() for lv in lvs),
                *self._flags(g)]
            for g in GROUPS
        }
        self.n_features_out_ = {g: len(v) for g, v in self.feature_names_out_.items()}
        return self

    def transform(self, df: pd.DataFrame) -> dict[str, np.ndarray]:
        """Arrays (n_rows, n_features_out_[group]) float32, keyed by group."""
        if not hasattr(self, "columns_"):
            raise RuntimeError("FoldPreprocessor.transform called before fit")
        out: dict[str, np.ndarray] = {}
        for group in GROUPS:
            cols = self.columns_[group]
            x = df[cols].to_numpy(dtype=float) if cols else np.zeros((len(df), 0))
            x = self._apply_log(x, self.log_floor_[group])
            x = np.where(np.isnan(x), self.fill_[group], x)
            parts = [(x - self.centre_[group]) / self.scale_[group]]
            for col, levels in self.levels_[group].items():
                values = df[col].map(lambda v: None if pd.isna(v) else cell_text(v))
                parts.append(np.stack([(values == cell_text(lv)).to_numpy(dtype=float)
                                       for lv in levels], axis=1))
            flags = self._flags(group)
            if flags:
                parts.append(df[flags].to_numpy(dtype=float))
            out[group] = np.concatenate(parts, axis=1).astype(np.float32)
        return out

    def fit_transform(self, train_df: pd.DataFrame) -> dict[str, np.ndarray]:
        return self.fit(train_df).transform(train_df)

    # -- serialisation (JSON, never pickled) -------------------------------------------
    def required_columns(self) -> list[str]:
        """The input columns `transform` reads: selected numeric/radiomics columns,
        categorical columns and flags, in group order."""
        if not hasattr(self, "columns_"):
            raise RuntimeError("FoldPreprocessor.required_columns called before fit")
        return [c for g in GROUPS for c in (*self.columns_[g], *self.levels_[g],
                                            *self._flags(g))]

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as plain JSON types (floats exact: `json` writes `repr`);
        `from_dict` rebuilds a preprocessor whose `transform` gives identical arrays."""
        if not hasattr(self, "columns_"):
            raise RuntimeError("FoldPreprocessor.to_dict called before fit")

        def floats(arrays: dict[str, np.ndarray]) -> dict[str, list[float | None]]:
            return {g: [None if np.isnan(v) else float(v) for v in np.asarray(a, float)]
                    for g, a in arrays.items()}

        return {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "settings": dataclasses.asdict(self.settings),
            "spec": {"label_column": self.spec.get("label_column", "label"),
                     "groups": self.spec["groups"], "flags": self.spec.get("flags", {})},
            "columns": self.columns_, "levels": self.levels_,
            "levels_seen": self.levels_seen_,
            "fill": floats(self.fill_), "centre": floats(self.centre_),
            "scale": floats(self.scale_), "log_floor": floats(self.log_floor_),
            "feature_names_out": self.feature_names_out_,
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> FoldPreprocessor:
        """A fitted preprocessor from `to_dict` output.

        Raises:
            ConfigError: not a preprocessor state of a version this code reads.
        """
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ConfigError(f"not a {STATE_FORMAT} state of version {STATE_VERSION}",
                              fix="rebuild it with this version of mmfusion")
        pre = cls(state["spec"], state["settings"])

        def arrays(key: str) -> dict[str, np.ndarray]:
            return {g: np.array([np.nan if v is None else v for v in state[key][g]],
                                dtype=float) for g in GROUPS}

        pre.columns_ = {g: list(state["columns"][g]) for g in GROUPS}
        pre.levels_ = {g: {c: list(lv) for c, lv in state["levels"][g].items()} for g in GROUPS}
        pre.levels_seen_ = {g: {c: list(lv) for c, lv in state["levels_seen"][g].items()}
                            for g in GROUPS}
        pre.fill_, pre.centre_ = arrays("fill"), arrays("centre")
        pre.scale_, pre.log_floor_ = arrays("scale"), arrays("log_floor")
        pre.feature_names_out_ = {g: list(state["feature_names_out"][g]) for g in GROUPS}
        pre.n_features_out_ = {g: len(v) for g, v in pre.feature_names_out_.items()}
        return pre


def fold_frames(table: pd.DataFrame, folds: pd.DataFrame, fold: int) -> dict[str, pd.DataFrame]:
    """The rows of `table` in each split (train/val/test) of `fold`, in folds.tsv order."""
    part = folds[folds["fold"] == fold]
    if part.empty:
        raise TableError(f"fold {fold} not in folds table")
    indexed = table.set_index("patient_id", drop=False)
    return {split: indexed.loc[part.loc[part["split"] == split, "patient_id"]]
            .reset_index(drop=True) for split in ("train", "val", "test")}
