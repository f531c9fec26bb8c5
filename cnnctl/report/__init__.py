"""What people see: Rich tables (`tables`) and matplotlib figures (`figures`). Nothing prints.

`from cnnctl import report` then `report.runs_table(...)`, `report.save_curves(...)`.
"""

from cnnctl.report.figures import (
    curves_figure,
    save_confusion,
    save_curves,
    save_error_grid,
    save_pr_curves,
    save_residuals,
    save_scatter,
)
from cnnctl.report.masks import colour_mask, mask_colours, overlay, save_mask_gallery
from cnnctl.report.tables import (
    Column,
    TrainingDisplay,
    check_warnings,
    checks_table,
    datasets_table,
    epoch_line,
    evaluation_lines,
    facts_table,
    fitted_table,
    layers_table,
    plural,
    predictions_csv,
    predictions_table,
    runs_listing,
    runs_table,
    studies_table,
    training_progress,
    training_summary,
)

__all__ = [
    "Column",
    "TrainingDisplay",
    "check_warnings",
    "checks_table",
    "colour_mask",
    "mask_colours",
    "overlay",
    "save_mask_gallery",
    "curves_figure",
    "datasets_table",
    "epoch_line",
    "evaluation_lines",
    "facts_table",
    "fitted_table",
    "layers_table",
    "plural",
    "predictions_csv",
    "predictions_table",
    "runs_listing",
    "runs_table",
    "studies_table",
    "save_confusion",
    "save_curves",
    "save_error_grid",
    "save_pr_curves",
    "save_residuals",
    "save_scatter",
    "training_progress",
    "training_summary",
]
