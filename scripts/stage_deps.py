"""The code each DVC stage runs: the import closure of its module inside ``pipeline/``.

``dvc.yaml`` lists these files (or folders all of whose files are in the closure) as
each stage's code deps, so a change to any module a stage imports reruns the stage and
nothing else does. ``tests/test_dvc_deps.py`` fails when the two disagree; run

    python scripts/stage_deps.py            # print every stage's code deps
    python scripts/stage_deps.py train      # one stage
    python scripts/stage_deps.py --write    # put them into dvc.yaml (other lines untouched)
 Imports are read statically (also those inside functions);
two kinds of loading that no import statement shows are added by rule: the model
registry imports every module of ``pipeline/models``, and the native kernels' builds
compile ``pipeline/native/c3_kernels.c`` and ``pipeline/trainops/kernels.c``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"

# module file -> files it loads without an import statement
IMPLICIT = {
    "pipeline/models/registry.py": ["pipeline/models"],  # _import_all(): every network registers itself
    "pipeline/native/build.py": ["pipeline/native/c3_kernels.c"],
    "pipeline/trainops/functions.py": ["pipeline/trainops/kernels.c"],
    "pipeline/sources/__init__.py": ["pipeline/sources"],
}


def module_file(name: str) -> Path | None:
    """The file a dotted ``pipeline...`` name loads (a module or a package's __init__)."""
    parts = name.split(".")
    if parts[0] != "pipeline":
        return None
    path = ROOT.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported_names(path: Path) -> set[str]:
    """Dotted names of every pipeline module ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # the project imports absolutely; refuse rather than guess
                raise SystemExit(f"{path}:{node.lineno}: relative import; write it absolutely")
            module = node.module or ""
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}  # "from pkg import submodule"
    return {n for n in names if n == "pipeline" or n.startswith("pipeline.")}


def closure(module: str) -> set[str]:
    """Project-relative files (posix) that running ``module`` can execute or load."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            path = module_file(".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            todo += sorted(imported_names(path))
            for extra in IMPLICIT.get(path.relative_to(ROOT).as_posix(), []):
                target = ROOT / extra
                for file in ([target] if target.is_file() else sorted(target.rglob("*.py"))):
                    if file not in seen:
                        rel = file.relative_to(ROOT).with_suffix("")
                        if file.suffix == ".py":
                            todo.append(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
                        else:
                            seen.add(file)
    return {p.relative_to(ROOT).as_posix() for p in seen}


def package_files(folder: str) -> set[str]:
    base = ROOT / folder
    return {p.relative_to(ROOT).as_posix() for p in base.rglob("*") if p.is_file() and p.suffix in (".py", ".c")
            and "__pycache__" not in p.parts}


def minimal_deps(files: set[str]) -> list[str]:
    """``files`` with every folder whose code files are all included written as the folder."""
    deps = set(files)
    folders = sorted({str(Path(f).parent) for f in files} - {"pipeline"}, key=lambda f: f.count("/"))
    for folder in folders:
        inside = package_files(folder)
        if inside and inside <= files:
            deps = {d for d in deps if not d.startswith(folder + "/")} | {folder}
    # a folder inside a folder already listed
    return sorted(d for d in deps if not any(d.startswith(o + "/") for o in deps if o != d))


def stage_modules(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, str]:
    """DVC stage name -> the module its ``portrait-curation <command>`` runs."""
    sys.path.insert(0, str(ROOT))
    from pipeline.cli import COMMANDS

    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        cmd = (stage.get("do") or stage)["cmd"]
        words = cmd.split()
        if words[0] != "portrait-curation":
            raise SystemExit(f"stage {name}: command {cmd!r} is not a portrait-curation command")
        out[name] = COMMANDS[words[1]][0]
    return out


def rewrite_code_deps(text: str, deps: dict[str, list[str]]) -> str:
    """``dvc.yaml``'s text with each stage's ``pipeline/...`` deps replaced by ``deps[stage]``.

    Line-based, so comments and layout stay as they are: in each stage's ``deps:`` list the
    old code entries are dropped and the new ones follow the data deps.
    """
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if indent == 2 and stripped.endswith(":") and not stripped.startswith("#"):
            stage = stripped[:-1]
        if stripped == "deps:" and stage in deps:
            out.append(line)
            i += 1
            item_indent = None
            while i < len(lines) and lines[i].strip().startswith("- "):
                item_indent = len(lines[i]) - len(lines[i].lstrip())
                if not lines[i].strip()[2:].startswith("pipeline/"):
                    out.append(lines[i])
                i += 1
            pad = " " * (item_indent if item_indent is not None else indent + 2)
            out += [f"{pad}- {dep}\n" for dep in deps[stage]]
            continue
        out.append(line)
        i += 1
    return "".join(out)


def main(argv: list[str]) -> int:
    modules = stage_modules()
    if argv == ["--write"]:
        path = ROOT / "dvc.yaml"
        path.write_text(rewrite_code_deps(path.read_text(), {name: minimal_deps(closure(m)) for name, m in modules.items()}))
        print(f"wrote the code deps of {len(modules)} stages into {path.name}")
        return 0
    for name in argv or modules:
        print(f"{name}:")
        for dep in minimal_deps(closure(modules[name])):
            print(f"  - {dep}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
