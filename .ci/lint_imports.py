"""Run import-linter on the package as it is installed: kernels/ becomes fastdd/kernels.

grimp reads the package from the file system, and in this repository `fastdd.kernels` lives in kernels/
(pyproject's package-dir), so a copy of the installed layout is linted instead, with the repository's
pyproject.toml as the configuration.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / "fastdd", Path(tmp) / "fastdd", ignore=ignore)
        shutil.copytree(ROOT / "kernels", Path(tmp) / "fastdd" / "kernels", ignore=ignore)
        env = {**os.environ, "PYTHONPATH": tmp}
        cmd = ["lint-imports", str(ROOT / "pyproject.toml"), "--no-cache"]
        return subprocess.call(cmd, cwd=tmp, env=env)


if __name__ == "__main__":
    sys.exit(main())
