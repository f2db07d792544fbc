"""portrait-curation: build portrait-segmentation data cheaply, train and audit tiny models."""

import os as _os

# albumentations asks PyPI for a newer version at import; offline that only costs time.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
_os.environ.setdefault("DVC_NO_ANALYTICS", "1")
_os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

__version__ = "0.1.0"
