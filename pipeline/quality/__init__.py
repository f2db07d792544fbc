"""The learned quality score of a pseudo-label, the auto-accept rule and its audit.

Why: a person reviewing pseudo-labels one by one is the expensive part of cheap data. A
score that says *how likely* a mask is good (not just "lower is worse") lets the queue
show likely failures first and lets masks that are almost surely good skip the person,
with an error bound that evidence backs and a blind audit that keeps checking it.

- ``features``: the features read from a prediction's probabilities (mask entropy, the
  teachers' soft agreement; pseudo_label adds them to its own: confidence, flip agreement,
  teacher agreement, ...) and all of them turned into a design matrix (logit of shares,
  log of counts);
- ``calibration``: logistic regression of P(good) (good = IoU >= a threshold, or a
  person's accept), cross-fitted out of fold with folds grouped by parent photo, and its
  reliability (predicted vs observed), Brier score and failure ROC AUC;
- ``auto_accept``: the threshold rule (exact Clopper-Pearson bound, fixed-sequence testing over a
  fixed grid of candidate thresholds), the seeded audit draw and the auto journal's lines;
- ``groups``: IoU and auto-accept rate per race, gender and age where attributes exist;
- ``outputs``: the names of the files the ``score_pool`` stage writes into
  ``paths.quality`` and the readers the review queue, ``export_reviews`` and ``assemble`` use.

This ``__init__`` imports nothing, so a module that needs only ``outputs`` does not load
the fitting code.
"""
