"""How the crops compare with the portraits they imitate (EG1800): figures, table, plot, metrics.

The same detector runs on the reference portraits; their largest face's size and position
relative to the whole image, and their mask fraction, are what the crop geometry was tuned
to match. The table and plot put the crops' quantiles beside the reference's, so a change
of margins can be judged against the data instead of by eye.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.crops.geometry import face_in_crop
from pipeline.crops.planning import DROP_REASONS
from pipeline.detectors import Face

CALIBRATION_COLUMNS = ("mask_fraction", "face_height_frac", "face_width_frac", "face_cx_frac", "face_cy_frac")
REFERENCE_COLUMNS = ["id", "faces", *CALIBRATION_COLUMNS, "face_probability"]


def reference_measures(faces: Sequence[Face], image_size: tuple[int, int], mask_fraction: float) -> dict | None:
    """EG1800 figures of one portrait: its largest face relative to the whole image."""
    if not faces:
        return None
    face = max(faces, key=lambda f: f.width * f.height)
    width, height = image_size
    return {"mask_fraction": mask_fraction, **face_in_crop(face.box, (0, 0, width, height)),
            "face_probability": face.probability}


def calibration_table(crops: pd.DataFrame, reference: pd.DataFrame, quantiles: Sequence[float],
                      reference_name: str) -> pd.DataFrame:
    """Quantiles of each calibration figure for the crops beside the reference portraits."""
    rows = []
    for column in CALIBRATION_COLUMNS:
        for q in quantiles:
            row = {"measure": column, "quantile": q}
            for name, frame in (("crops", crops), (reference_name, reference)):
                values = frame[column].dropna() if column in frame.columns else pd.Series(dtype=float)
                row[name] = round(float(values.quantile(q)), 4) if len(values) else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def plot_calibration(crops: pd.DataFrame, reference: pd.DataFrame, reference_name: str) -> bytes:
    """Histograms of each calibration figure, crops over the reference, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"mask_fraction": "person mask fraction", "face_height_frac": "face height / crop height",
              "face_width_frac": "face width / crop width", "face_cx_frac": "face centre x / crop width",
              "face_cy_frac": "face centre y / crop height"}
    fig, axes = plt.subplots(1, len(CALIBRATION_COLUMNS), figsize=(4 * len(CALIBRATION_COLUMNS), 3.4))
    for ax, column in zip(axes, CALIBRATION_COLUMNS):
        bins = np.linspace(0, 1, 31)
        for frame, label in ((reference, reference_name), (crops, "crops")):
            values = frame[column].dropna() if column in frame.columns else []
            if len(values):
                ax.hist(np.clip(values, 0, 1), bins=bins, alpha=0.5, density=True,
                        label=f"{label} (n={len(values)}, median {np.median(values):.2f})")
        ax.set_title(titles[column], fontsize=10)
        if ax.get_legend_handles_labels()[0]:  # nothing to show when there are no crops (allow_empty)
            ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def summarize(n_photos: int, crops: pd.DataFrame, dropped: pd.DataFrame, reference: pd.DataFrame,
              reference_name: str, faces_detected: int) -> dict:
    """The DVC metrics: counts kept and dropped per reason, medians against the reference."""
    photos_with_crop = int(crops["parent_id"].nunique()) if len(crops) else 0
    reasons = dropped["reason"].value_counts() if len(dropped) else pd.Series(dtype=int)

    def median(frame: pd.DataFrame, column: str):
        if column not in frame.columns or not frame[column].notna().any():
            return None
        return round(float(frame[column].median()), 4)

    return {
        "photos": n_photos,
        "faces_detected": faces_detected,
        "crops_kept": int(len(crops)),
        "photos_with_crop": photos_with_crop,
        "share_photos_with_crop": round(photos_with_crop / n_photos, 4) if n_photos else 0.0,
        "dropped": {reason: int(reasons.get(reason, 0)) for reason in DROP_REASONS},
        "dropped_total": int(len(dropped)),
        "reference_images": int(len(reference)),
        "median_mask_fraction": {"crops": median(crops, "mask_fraction"),
                                 reference_name: median(reference, "mask_fraction")},
        "median_face_height_frac": {"crops": median(crops, "face_height_frac"),
                                    reference_name: median(reference, "face_height_frac")},
        "median_face_cy_frac": {"crops": median(crops, "face_cy_frac"),
                                reference_name: median(reference, "face_cy_frac")},
    }
