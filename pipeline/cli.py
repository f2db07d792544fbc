"""``portrait-curation``: one subcommand per pipeline stage (the same commands dvc.yaml runs)."""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). Modules are imported only when their command runs,
# so ``--help`` is instant and a stage never pays for another stage's imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "download": ("pipeline.stages.download", "fetch each dataset source, verify its sha256, extract safely"),
    "prepare": ("pipeline.stages.prepare", "read each source's own format into the canonical dataset"),
    "crop-portraits": ("pipeline.stages.crop_portraits", "crop portraits around detected faces in full-body photos"),
    "train-teacher": ("pipeline.stages.train_teacher", "fine-tune the DeepLabv3+ teacher on the labelled data"),
    "pseudo-label": ("pipeline.stages.pseudo_label", "pseudo-label the pool (portrait crops) with the fused teachers, features per mask"),
    "score-pool": ("pipeline.stages.score_pool", "calibrated P(good) per pool mask; auto-accept above an evidence bound, audited"),
    "review": ("pipeline.tools.review", "open the accept/reject review queue in the FiftyOne App"),
    "export-reviews": ("pipeline.stages.export_reviews", "write review decisions to the file DVC tracks"),
    "assemble": ("pipeline.stages.assemble", "build the training set from the enabled sources"),
    "train": ("pipeline.stages.train", "train a segmentation network (ExtremeC3Net: two stages)"),
    "evaluate": ("pipeline.stages.evaluate", "mIoU and boundary F1 on EG1800's test split, per-image IoU"),
    "export-onnx": ("pipeline.stages.export_onnx", "export each trained model to ONNX, checked against PyTorch"),
    "complexity": ("pipeline.stages.complexity", "parameters, FLOPs (two conventions) and CPU latency"),
    "compare": ("pipeline.stages.compare", "comparison table of the trained architectures (the paper's Table 2)"),
    "attributes": ("pipeline.tools.attributes", "race/gender/age annotations: import, export, annotate in FiftyOne"),
    "bias-report": ("pipeline.stages.bias_report", "mIoU per race, gender and age group with intervals and disparity"),
    "segment": ("pipeline.tools.segment", "apply a trained model to images or a video: masks, cut-outs, new backgrounds"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: portrait-curation <command> [--params params.yaml] [options]",
        "",
        "Builds portrait-segmentation training data and trains and audits tiny models.",
        "Each command is one DVC stage; `dvc repro` runs them in order from dvc.yaml.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`portrait-curation <command> --help` explains a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from pipeline import __version__

        print(__version__)
        return 0
    name = argv[0].replace("_", "-")
    if name not in COMMANDS:
        print(f"portrait-curation: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
