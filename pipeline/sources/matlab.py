"""MATLAB .mat reading (EG1800 masks and split lists, CCP annotations)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.images import BadImageError


def load_mat_variable(path: Path, variable: str) -> np.ndarray:
    import scipy.io

    try:
        data = scipy.io.loadmat(path, variable_names=[variable])
    except NotImplementedError:
        # MATLAB v7.3 files are HDF5; scipy cannot read them.
        raise BadImageError(f"{path}: MATLAB v7.3 (HDF5) file; re-save it with -v7") from None
    except Exception as exc:
        raise BadImageError(f"{path}: unreadable .mat file ({type(exc).__name__}: {exc})") from None
    if variable not in data:
        raise BadImageError(f"{path}: no variable {variable!r} in the .mat file")
    return np.asarray(data[variable])
