"""The learned quality score: features, the logistic fit, cross-fitting by photo, calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.quality import calibration as cal
from pipeline.quality import features as qf
from pipeline.stage import StageError


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_shares_enter_as_clipped_logits_and_counts_as_logs():
    values = qf.transform("flip_agreement", [0.5, 0.0, 1.0, 0.9])
    assert values[0] == 0.0
    assert values[1] == pytest.approx(np.log(qf.EPSILON / (1 - qf.EPSILON)))  # clipped, finite
    assert values[2] == pytest.approx(-values[1]) and values[3] == pytest.approx(np.log(9.0))
    assert qf.transform("components", [0, 1, 3]).tolist() == pytest.approx([0.0, np.log(2), np.log(4)])
    assert np.isnan(qf.transform("confidence", [np.nan])[0])


def test_a_value_outside_its_range_is_named():
    frame = pd.DataFrame({"id": ["a", "b"], "confidence": [0.2, 1.2], "components": [1, 2]})
    with pytest.raises(StageError, match=r"b: confidence = 1.2 is not a share"):
        qf.check_ranges(frame, ["confidence"], "scores.csv")
    frame.loc[1, "confidence"] = 0.7
    frame.loc[0, "components"] = -1
    with pytest.raises(StageError, match=r"a: components = -1.0 is not a count"):
        qf.check_ranges(frame, ["components"], "scores.csv")


def test_usable_features_leave_out_missing_and_empty_columns_with_a_reason():
    evidence = pd.DataFrame({"confidence": [0.1, 0.2], "teacher_agreement": [np.nan, np.nan], "components": [1, 2]})
    pool = pd.DataFrame({"confidence": [0.3], "teacher_agreement": [np.nan]})
    used, notes = qf.usable_features(["confidence", "teacher_agreement", "components"],
                                     {"evidence": evidence, "pool": pool})
    assert used == ["confidence"]
    assert any("teacher_agreement" in n and "empty" in n for n in notes)
    assert any("components" in n and "not a column of the pool" in n for n in notes)


def test_the_fit_recovers_a_known_logistic_truth():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2))
    truth = (1.0, np.array([2.0, -1.5]))
    y = rng.random(20000) < _sigmoid(truth[0] + x @ truth[1])
    intercept, coefficients = cal.fit_logistic_arrays(x, y, l2=1e-6)
    assert intercept == pytest.approx(1.0, abs=0.08)
    assert coefficients == pytest.approx([2.0, -1.5], abs=0.08)


def test_a_ridge_penalty_keeps_separable_data_finite():
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    y = np.array([0, 0, 1, 1])
    _, free = cal.fit_logistic_arrays(x, y, l2=1e-3)
    _, strong = cal.fit_logistic_arrays(x, y, l2=10.0)
    assert np.isfinite(free).all() and free[0] > strong[0] > 0


def drawn_features(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Shares whose logits are linear in a hidden quality: the model's own family, with noise."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=n)
    frame = pd.DataFrame({"flip_agreement": _sigmoid(2.0 + q + 0.3 * rng.normal(size=n)),
                          "teacher_agreement": _sigmoid(1.0 + 2.0 * q + 0.3 * rng.normal(size=n))})
    z = qf.raw_matrix(frame, list(frame.columns))
    p_true = _sigmoid(-0.5 + 0.8 * z[:, 0] + 0.6 * z[:, 1])
    good = rng.random(n) < p_true
    return frame, good, p_true


def test_out_of_fold_probabilities_match_observed_frequencies():
    frame, good, p_true = drawn_features(6000, seed=1)
    groups = [f"photo{i // 3}" for i in range(len(frame))]  # three crops per photo
    fit = cal.cross_fit(frame, good, groups, list(frame.columns), folds=5, l2=1.0, seed=0)
    assert np.isfinite(fit.probability).all()
    table = cal.reliability_table(fit.probability, good, bins=10)
    big = table[table["masks"] >= 300]
    assert len(big) >= 4
    assert np.abs(big["mean_predicted"] - big["observed_good"]).max() < 0.05
    summary = cal.calibration_summary(fit.probability, good, bins=10)
    assert summary["expected_calibration_error"] < 0.03
    # as good as knowing the truth, up to sampling: Brier within 0.005 of the true probabilities'
    assert summary["brier"] == pytest.approx(cal.brier(p_true, good), abs=0.005)
    assert summary["brier"] < summary["brier_of_base_rate"]


def test_folds_keep_each_photo_together_spread_failures_and_follow_the_seed():
    groups = [f"p{i // 4}" for i in range(400)]
    good = np.array([i % 10 != 0 for i in range(400)])  # every 10th mask bad
    folds = cal.group_folds(groups, good, folds=5, seed=3)
    frame = pd.DataFrame({"group": groups, "fold": folds, "bad": ~good})
    assert (frame.groupby("group")["fold"].nunique() == 1).all()
    bad_groups_per_fold = frame[frame["bad"]].groupby("fold")["group"].nunique()
    assert bad_groups_per_fold.max() - bad_groups_per_fold.min() <= 1
    assert (cal.group_folds(groups, good, folds=5, seed=3) == folds).all()
    assert not (cal.group_folds(groups, good, folds=5, seed=4) == folds).all()


def test_no_evidence_row_is_predicted_by_a_model_that_saw_its_photo():
    frame, good, _ = drawn_features(300, seed=2)
    groups = [f"photo{i // 2}" for i in range(300)]
    fit = cal.cross_fit(frame, good, groups, list(frame.columns), folds=3, l2=1.0, seed=0)
    for k, model in enumerate(fit.models):
        assert model.fitted_on == int((fit.fold != k).sum())  # fold k's model never saw fold k
        held = fit.fold == k
        assert np.allclose(model.predict(frame[held]), fit.probability[held])


def test_contributions_name_the_part_that_pulls_a_mask_down():
    frame, good, _ = drawn_features(2000, seed=3)
    model = cal.fit_model(frame, good, list(frame.columns), l2=1.0)
    probe = pd.DataFrame({"flip_agreement": [0.99, 0.5], "teacher_agreement": [0.2, 0.99]})
    parts = cal.low_part(model.contributions(probe))
    assert parts.tolist() == ["teacher_agreement", "flip_agreement"]
    assert cal.low_part(model.contributions(pd.DataFrame({"flip_agreement": [0.9999], "teacher_agreement": [0.9999]}))
                        ).tolist() == [""]  # better than average everywhere: nothing is low
    again = cal.LogisticModel.from_dict(model.as_dict())
    assert again == model and again.fingerprint() == model.fingerprint()
    assert np.allclose(again.predict(probe), model.predict(probe))


def test_reliability_of_a_hand_made_case():
    p = np.array([0.05, 0.15, 0.15, 0.95, 0.95, 0.95, 0.95])
    good = np.array([False, False, True, True, True, True, False])
    table = cal.reliability_table(p, good, bins=10)
    assert table["masks"].tolist() == [1, 2, 4]
    assert table["observed_good"].tolist() == [0.0, 0.5, 0.75]
    summary = cal.calibration_summary(p, good, bins=10)
    assert summary["brier"] == pytest.approx(np.mean((p - good) ** 2), abs=1e-6)  # rounded to 6 places
    # ECE: (1 * 0.05 + 2 * 0.35 + 4 * 0.2) / 7
    assert summary["expected_calibration_error"] == pytest.approx((0.05 + 0.7 + 0.8) / 7, abs=1e-6)


# ---------------------------------------------------------------------------- probability features


def test_binary_entropy_is_one_bit_at_a_half_and_zero_at_certainty():
    values = qf.binary_entropy([0.5, 0.0, 1.0, 0.25])
    assert values[0] == pytest.approx(1.0)
    assert values[1] == pytest.approx(0.0, abs=1e-4) and values[2] == pytest.approx(0.0, abs=1e-4)
    assert values[3] == pytest.approx(-(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75)))  # 0.8113 bits


def test_mask_entropy_averages_over_the_mask_and_its_unsure_rim_only():
    probability = np.zeros((4, 4), np.float32)
    probability[0, :] = 1.0  # 4 certain person pixels: 0 bits each
    probability[1, :2] = 0.5  # 2 pixels at 1 bit each
    probability[1, 2:] = 0.05  # below the band: background, not counted
    assert qf.mask_entropy(probability, uncertain_band=0.1) == pytest.approx(2 / 6, abs=1e-4)
    assert qf.mask_entropy(np.full((3, 3), 0.05, np.float32), uncertain_band=0.1) == 1.0  # nothing reached


def test_soft_agreement_is_one_minus_the_mean_gap_over_the_union_of_the_masks():
    a = np.array([[0.9, 0.9, 0.0, 0.0]], np.float32)
    b = np.array([[0.7, 0.3, 0.6, 0.0]], np.float32)
    # union: pixels 0, 1, 2 (the last is background for both); gaps 0.2, 0.6, 0.6
    assert qf.teacher_soft_agreement([a, b]) == pytest.approx(1 - (0.2 + 0.6 + 0.6) / 3)
    assert qf.teacher_soft_agreement([a, a]) == pytest.approx(1.0)
    assert np.isnan(qf.teacher_soft_agreement([a]))  # one teacher: nothing to agree with
    empty = np.zeros((1, 4), np.float32)
    assert qf.teacher_soft_agreement([empty, empty + 0.2]) == 1.0  # neither sees a person
    # three teachers: the mean over the three pairs
    c = np.array([[0.9, 0.9, 0.0, 0.0]], np.float32)
    pairs = [qf.teacher_soft_agreement([a, b]), qf.teacher_soft_agreement([a, c]), qf.teacher_soft_agreement([b, c])]
    assert qf.teacher_soft_agreement([a, b, c]) == pytest.approx(np.mean(pairs))


def test_probability_features_are_shares_the_model_can_read():
    probability = np.array([[0.95, 0.6, 0.02]], np.float32)
    teachers = {"general": np.array([[1.0, 0.7, 0.0]], np.float32),
                "landscape": np.array([[0.9, 0.5, 0.04]], np.float32)}
    row = qf.probability_features(probability, teachers, uncertain_band=0.1)
    assert set(row) == set(qf.PROBABILITY_FEATURES)
    frame = pd.DataFrame([row])
    qf.check_ranges(frame, list(qf.PROBABILITY_FEATURES), "scores.csv")  # in [0, 1]: no error
    assert row["teacher_soft_agreement"] == pytest.approx(1 - (0.1 + 0.2) / 2)  # union: the first two pixels
    entropy = qf.binary_entropy([0.95, 0.6])
    assert row["mask_entropy"] == pytest.approx(float(entropy.mean()), abs=1e-6)
