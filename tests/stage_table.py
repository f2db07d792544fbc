"""Every command of the CLI with its params section: what the general-rule tests walk.

``tests/test_dvc_deps.py`` and ``tests/hostile/test_general_rules.py`` check a rule on
every stage at once from this table; ``test_every_command_is_covered`` keeps it complete.
"""

from __future__ import annotations

import importlib

from pydantic import BaseModel

# command -> (module, params section, model class in that module, argv before --params)
STAGE_PARAMS = {
    "download": ("pipeline.stages.download", "download", "DownloadParams", []),
    "prepare": ("pipeline.stages.prepare", "prepare", "PrepareParams", []),
    "crop-portraits": ("pipeline.stages.crop_portraits", "crop_portraits", "CropParams", []),
    "train-teacher": ("pipeline.stages.train_teacher", "teacher", "TeacherParams", []),
    "pseudo-label": ("pipeline.stages.pseudo_label", "pseudo_label", "PseudoLabelParams", []),
    "score-pool": ("pipeline.stages.score_pool", "score_pool", "ScorePoolParams", []),
    "review": ("pipeline.tools.review", "review", "ReviewParams", ["--load-only"]),
    "export-reviews": ("pipeline.stages.export_reviews", "review", "ReviewParams", []),
    "assemble": ("pipeline.stages.assemble", "assemble", "AssembleParams", []),
    "train": ("pipeline.stages.train", "train", "TrainParams", []),
    "evaluate": ("pipeline.stages.evaluate", "evaluate", "EvaluateParams", []),
    "export-onnx": ("pipeline.stages.export_onnx", "export_onnx", "ExportOnnxParams", []),
    "complexity": ("pipeline.stages.complexity", "complexity", "ComplexityParams", []),
    "compare": ("pipeline.stages.compare", "compare", "CompareParams", []),
    "attributes": ("pipeline.tools.attributes", "attributes", "AttributesParams", ["export"]),
    "bias-report": ("pipeline.stages.bias_report", "bias_report", "BiasReportParams", []),
    "segment": ("pipeline.tools.segment", "segment", "SegmentParams", ["photos", "--arch", "extremec3net"]),
}


def section_model(command: str) -> type[BaseModel]:
    module, _, name, _ = STAGE_PARAMS[command]
    mod = importlib.import_module(module)
    if hasattr(mod, name):
        return getattr(mod, name)
    from pipeline.review.config import ReviewParams  # the review commands share one section

    return ReviewParams


def all_sections() -> dict[str, type[BaseModel]]:
    """params section -> its model, for every section a command reads (plus ``paths``)."""
    from pipeline.paths import ProjectPaths

    sections = {section: section_model(command) for command, (_, section, _, _) in STAGE_PARAMS.items()}
    sections["paths"] = ProjectPaths
    return sections
