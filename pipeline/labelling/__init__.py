"""Running ``pseudo_label``'s teachers over a pool, in one process or on a Ray cluster, resumably.

- ``work``: the resumable work folder (one record per pool image, written atomically, under a
  fingerprint of the teacher settings) and what an image's result holds;
- ``pool_files``: the pool as files of any location fsspec understands (a folder, ``s3://``);
- ``prediction``: the fused teachers' prediction of one image and its per-mask features and score;
- ``labeller``: the labeller (work items -> results) and the picklable factory an engine's worker calls;
- ``local`` / ``ray_data``: the two engines; both only run a labeller the stage builds and
  save its results in the work folder, so the stage assembles the same outputs from either.
"""
