"""Run pytest on the given test files inside Bazel's runfiles tree (the `main` of every py_test).

- Project modules must come from the runfiles (the targets' declared deps and the genrule's
  protobuf modules): the editable-install finder of the venv is removed, and after the run any
  project module loaded from elsewhere fails the test with a message naming it.
- Writes the JUnit XML Bazel asks for, keeps pytest's cache and Hypothesis' database in the
  test's private temp folder, and skips the import-time proto codegen (Bazel built the modules).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROJECT_PACKAGES = ("env_server", "jaxrl_desktop", "ranking", "eval", "configs")


def _runfiles_main() -> Path:
    """The folder of this workspace inside the runfiles tree (the test's working directory)."""
    srcdir = os.environ.get("TEST_SRCDIR") or os.environ.get("PYTHON_RUNFILES")
    workspace = os.environ.get("TEST_WORKSPACE", "jaxrl_desktop_ws")
    if srcdir and (Path(srcdir) / workspace).is_dir():
        return Path(srcdir) / workspace
    return Path.cwd()


def _drop_editable_finders() -> None:
    """Remove setuptools' editable-install import hooks so a missing dep cannot hide."""
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
    sys.path_importer_cache.clear()


def _leaked_modules(root: Path) -> list[str]:
    """Project modules imported from outside ``root`` (e.g. the source tree via a .pth entry)."""
    leaked = []
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] not in PROJECT_PACKAGES:
            continue
        origin = getattr(module, "__file__", None)
        if origin and not Path(os.path.abspath(origin)).is_relative_to(root):
            leaked.append(f"{name} from {origin}")
    return sorted(leaked)


def main(argv: list[str]) -> int:
    """Run pytest on ``argv`` (test files relative to the workspace root, then pytest options)."""
    root = _runfiles_main()
    tmp = Path(os.environ.get("TEST_TMPDIR", "/tmp"))
    os.environ["ENV_SERVER_SKIP_PROTO_CODEGEN"] = "1"
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(tmp / "hypothesis"))
    _drop_editable_finders()
    if not (root / "pyproject.toml").exists():
        print(f"pytest_main: pyproject.toml missing from the runfiles at {root}", file=sys.stderr)
        return 2
    args = ["-p", "no:cacheprovider", f"--rootdir={root}", "-c", str(root / "pyproject.toml")]
    if os.environ.get("XML_OUTPUT_FILE"):
        args.append(f"--junitxml={os.environ['XML_OUTPUT_FILE']}")
    for arg in argv:
        args.append(str(root / arg) if arg.endswith(".py") and not arg.startswith("-") else arg)

    import pytest  # after the finders are gone and the env is set

    code = int(pytest.main(args))
    leaked = _leaked_modules(root)
    if leaked:
        print("pytest_main: project modules were imported from outside the Bazel runfiles "
              f"({root}); add the missing deps:\n  " + "\n  ".join(leaked), file=sys.stderr)
        return code or 3
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
