"""Run the whole pipeline with another profile (profiles/<name>.yaml) as a DVC experiment.

    python scripts/run_profile.py paper          # or: make profile PROFILE=paper
    python scripts/run_profile.py cpu --print    # only show the dvc command

A profile is a complete params file with the same keys as params.yaml (the quick
profile). This runs ``dvc exp run --temp -n <name>`` with one ``--set-param`` for every
value the profile changes, so the run is recorded as an experiment next to the quick one
(``dvc exp show``, ``dvc metrics diff``) and the workspace's params.yaml is not touched;
``dvc exp apply <name>`` brings its params and results into the workspace.

Any single stage also takes a profile directly, without DVC:
``portrait-curation train --params profiles/paper.yaml``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def changed_values(quick, profile, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) for every value ``profile`` sets differently from ``quick``.

    Mappings are compared key by key; lists and scalars are values. (No key holds a dot:
    DVC names nested params with dots, which is also why architecture names have none.)
    """
    if isinstance(quick, dict) and isinstance(profile, dict):
        if set(quick) != set(profile):
            raise SystemExit(f"{prefix or 'top level'}: the profile's keys differ from params.yaml's "
                             f"({sorted(set(quick) ^ set(profile))}); profiles differ only in values")
        out = []
        for key in profile:
            out += changed_values(quick[key], profile[key], f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if quick == profile else [(prefix, profile)]


def dvc_command(name: str, changes: list[tuple[str, object]]) -> list[str]:
    command = ["dvc", "exp", "run", "--temp", "-n", name]
    for key, value in changes:
        command += ["--set-param", f"{key}={json.dumps(value)}"]  # JSON is YAML: DVC parses it
    return command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", help="name of a file in profiles/ (cpu, paper)")
    parser.add_argument("--print", action="store_true", help="print the dvc command instead of running it")
    args = parser.parse_args(argv)
    path = ROOT / "profiles" / f"{args.profile}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml")))
        print(f"run_profile: no profile {path.relative_to(ROOT)} (known: {known})", file=sys.stderr)
        return 2
    quick = yaml.safe_load((ROOT / "params.yaml").read_text())
    changes = changed_values(quick, yaml.safe_load(path.read_text()))
    command = dvc_command(args.profile, changes)
    if args.print:
        print(shlex.join(command))
        return 0
    print(f"profile {args.profile}: {len(changes)} values differ from params.yaml; running {shlex.join(command[:6])} ...")
    return subprocess.call(command, cwd=ROOT)


if __name__ == "__main__":
    raise SystemExit(main())
