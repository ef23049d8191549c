#!/usr/bin/env python3
"""Print the project's requirements (base + the named extras) from pyproject.toml, one per line.

The Dockerfile installs these before copying the source, so a code change does not reinstall every dependency:

    python deploy/pyproject_requirements.py train server verifiers > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"{pyproject}: no extra named {', '.join(unknown)} (have: {', '.join(optional)})")
    found = list(project.get("dependencies", []))
    for extra in extras:
        found += [req for req in optional[extra] if not req.startswith(project["name"])]  # skip self-references
    return list(dict.fromkeys(found))


if __name__ == "__main__":
    print("\n".join(requirements(Path("pyproject.toml"), sys.argv[1:])))
