"""Pseudo-label IoU and auto-accept rate per race, gender and age (where attributes exist).

Why: if the rule auto-accepted one group's masks more often than another's, the training
set would drift towards that group without anyone looking. Groups are formed as the bias
report forms them (``pipeline.bias.groups.memberships``: an image counts once in each group
one of its people is in) on the evidence masks of the attribute table's photos (EG1800's
test portraits), with their out-of-fold P(good).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.bias.groups import group_order, memberships

GROUPINGS = ("race", "gender", "age")


def attribute_rates(evidence: pd.DataFrame, attributes: pd.DataFrame, source: str, threshold: float | None
                    ) -> dict[str, list[dict]]:
    """Per grouping, one row per group: images, mean IoU, share good, share auto-accepted (and
    how many of those were bad).

    ``evidence``: columns id ("<source>/<key>"), iou, good, p_good (out of fold). Rows of other
    sources are not in the table. With no threshold nothing is auto-accepted (rate 0).
    """
    rows = evidence[evidence["id"].astype(str).str.startswith(f"{source}/")].drop(columns=["group"], errors="ignore")
    rows["image_id"] = rows["id"].astype(str).str.split("/", n=1).str[1]
    rows["auto"] = (rows["p_good"] >= threshold) if threshold is not None else False
    out: dict[str, list[dict]] = {}
    for grouping in GROUPINGS:
        joined = memberships(attributes, grouping).merge(rows, on="image_id", how="inner")
        table = []
        for group in group_order(grouping):
            part = joined[joined["group"] == group]
            n = len(part)
            auto = part["auto"].to_numpy(dtype=bool) if n else np.zeros(0, bool)
            table.append({"group": group, "images": n,
                          "mean_iou": _round(part["iou"].mean()) if n else None,
                          "good_share": _round(part["good"].mean()) if n else None,
                          "auto_accept_rate": _round(auto.mean()) if n else None,
                          "auto_accepted": int(auto.sum()),
                          "auto_accepted_bad": int((auto & ~part["good"].to_numpy(dtype=bool)).sum()) if n else 0})
        out[grouping] = table
    return out


def _round(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else round(value, 6)
