"""How close to the oracle can any learner get on the demo protocol? A simulation.

Draws many synthetic cohorts from the demo's label model (`mmfusion.synth.latent`) and, on
each, runs the demo's evaluation protocol: stratified 3-fold split, each fold's training part
(`n_train` patients; the demo trains on 64 and validates on 16 of its 80) fits a
*correctly specified* logistic regression on the exact standardised observables the true
logit is linear in (node count, largest node diameter, necrosis, tumour thickness, T stage,
poor differentiation, age, log NLR, log SCC-Ag, log CEA, albumin), and the test fold is
scored against the oracle (the true probabilities) on the same patients. No real model can
beat this learner in expectation: it is told the functional form and sees the exact
observables, where our networks must find them in CT patches and tables. The spread of its
mean-over-folds AUC / oracle AUC across cohorts is the noise any single demo cohort carries.

    python bench/learning_ceiling.py [--cohorts 300] [--patients 120] [--n-train 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from mmfusion.synth.latent import _sigmoid, _terms, draw_labels, sample_latent, true_logit  # noqa: E402,E501


def one_cohort(seed: int, n: int, n_train: int, prevalence: float) -> tuple[float, float]:
    """(mean test AUC of the well-specified learner, mean oracle AUC) over 3 folds."""
    rng = np.random.default_rng(seed)
    cohort = sample_latent(rng, n)
    logit = true_logit(cohort, prevalence)
    y = draw_labels(rng, logit)
    x = np.column_stack(list(_terms(cohort).values()))
    learner, oracle = [], []
    for train, test in StratifiedKFold(3, shuffle=True, random_state=seed).split(x, y):
        train = rng.permutation(train)[:n_train]
        if len(np.unique(y[train])) < 2 or len(np.unique(y[test])) < 2:
            continue
        model = LogisticRegression(C=1.0, max_iter=2000).fit(x[train], y[train])
        learner.append(roc_auc_score(y[test], model.decision_function(x[test])))
        oracle.append(roc_auc_score(y[test], _sigmoid(logit[test])))
    return float(np.mean(learner)), float(np.mean(oracle))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohorts", type=int, default=300)
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--prevalence", type=float, default=0.4)
    args = ap.parse_args()
    res = np.array([one_cohort(s, args.patients, args.n_train, args.prevalence)
                    for s in range(args.cohorts)])
    ratio = res[:, 0] / res[:, 1]
    q = np.percentile(ratio, [5, 25, 50, 75, 95])
    print(f"{args.cohorts} cohorts of {args.patients} patients, 3 folds, {args.n_train} "
          f"training patients per fold; well-specified logistic regression on the exact "
          f"observables")
    print(f"  mean test AUC {res[:, 0].mean():.3f}, oracle {res[:, 1].mean():.3f} "
          f"(sd over cohorts {res[:, 0].std():.3f} / {res[:, 1].std():.3f})")
    print(f"  AUC / oracle: mean {ratio.mean():.3f}, percentiles 5/25/50/75/95: "
          + " / ".join(f"{v:.3f}" for v in q))
    print(f"  share of cohorts with AUC >= 0.9 x oracle: {(ratio >= 0.9).mean():.1%}")


if __name__ == "__main__":
    main()
