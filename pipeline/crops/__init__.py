"""Portrait crops from full-body photos, as pure functions the ``crop_portraits`` stage calls.

- ``geometry``: the crop box from a face box (margins, aspect ratio, jitter), its fit to
  the photo (shift or pad) and the crop of image and mask together;
- ``planning``: the drop rules (is this face the annotated person's, is the crop usable),
  one plan per kept face, crop ids and the provenance a crop's manifest row carries;
- ``calibration``: the figures compared with EG1800's portraits, their table, plot and the
  stage's metrics.

Nothing here reads or writes a file or knows the params file: the stage passes the values
(its ``geometry`` and ``quality`` sections for ``plan_crops``, plain values elsewhere).
"""
