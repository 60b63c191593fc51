#!/usr/bin/env python3
"""Reference values for armwatch's rate interval and AUC (pinned in
tests/fixtures/integrity_stats.json):

- Wilson intervals: statsmodels.stats.proportion.proportion_confint(method="wilson");
- AUC of integer-binned scores: sklearn.metrics.roc_auc_score (ties count one half);
- Hanley-McNeil (1982) standard error, eq. 2, evaluated at sklearn's AUC.

    pip install statsmodels scikit-learn
    python3 scripts/reference/integrity_stats.py > tests/fixtures/integrity_stats.json
"""
import json
import math

import numpy as np
import sklearn
import statsmodels
from sklearn.metrics import roc_auc_score
from statsmodels.stats.proportion import proportion_confint


def hanley_mcneil(a, n1, n2):
    q1 = a / (2 - a)
    q2 = 2 * a * a / (1 + a)
    return math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2))


out = {
    "source": "statsmodels %s proportion_confint(method='wilson'); scikit-learn %s roc_auc_score; Hanley & McNeil 1982 eq. 2"
    % (statsmodels.__version__, sklearn.__version__),
    "wilson": [],
    "auc": [],
}
for s, n, alpha in [(0, 10, 0.05), (3, 10, 0.05), (20, 1000, 0.05), (20, 1000, 0.002), (133, 4096, 0.05), (999, 1000, 0.01)]:
    lo, hi = proportion_confint(s, n, alpha=alpha, method="wilson")
    out["wilson"].append({"successes": s, "n": n, "alpha": alpha, "low": lo, "high": hi})

rng = np.random.default_rng(20261124)
for shift in [0.0, 0.3, 1.0]:
    n = 400
    y = rng.integers(0, 2, n)
    x = rng.normal(0, 1, n) + shift * y
    # scores in [0, 1], on the bin grid armwatch uses (1024 bins): bin centres
    p = 1 / (1 + np.exp(-x))
    bins = np.minimum((p * 1024).astype(int), 1023)
    centre = (bins + 0.5) / 1024
    a = roc_auc_score(y, centre)
    n1, n2 = int(y.sum()), int(n - y.sum())
    out["auc"].append({"scores": [float(c) for c in centre], "labels": [int(v) for v in y], "auc": a,
                       "hanley_mcneil_se": hanley_mcneil(a, n1, n2)})
print(json.dumps(out, indent=1))
