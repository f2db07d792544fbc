"""Who a segmentation model fails: accuracy per race, gender, age and intersectional class.

The ExtremeC3Net paper reports mIoU per group (its Table 5) and the dataset's imbalance
(Table 7, Figure 5). ``groups`` holds the statistics (memberships, bootstrap intervals,
disparities, the class histogram, ``build_report``), ``render`` turns a report into
Markdown, flat DVC metrics and plots. The stage that reads and writes the files is
``pipeline.stages.bias_report``.
"""

from pipeline.bias.groups import (GROUPINGS, NO_CLASS, BiasReport, Disparity, bootstrap_interval, build_report,
                                  class_histogram, class_labels, disparity, gap_interval, group_order, group_rng,
                                  memberships, per_image_iou, summarise_groups)
from pipeline.bias.render import flat_metrics, groups_table, plot_groups, plot_histogram, render_markdown

__all__ = ["GROUPINGS", "NO_CLASS", "BiasReport", "Disparity", "bootstrap_interval", "build_report", "class_histogram",
           "class_labels", "disparity", "gap_interval", "group_order", "group_rng", "memberships", "per_image_iou",
           "summarise_groups", "flat_metrics", "groups_table", "plot_groups", "plot_histogram", "render_markdown"]
