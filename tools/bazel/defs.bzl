"""Python macros for the offline build: `pytest_test` (a test file run by pytest) and `py_module_binary`."""

def pytest_test(name, src, deps = [], data = [], args = [], **kwargs):
    """A py_test that runs pytest on the single file `src`.

    Args:
      name: target name.
      src: the test file (in the calling package).
      deps: py_library targets the test imports.
      data: extra runfiles (conftest.py, fixtures, ...).
      args: extra pytest arguments, e.g. ["-m", "not slow"].
      **kwargs: passed to py_test (size, tags, timeout, shard_count, ...).
    """
    native.py_test(
        name = name,
        srcs = ["//tools/bazel:pytest_main.py", src],
        main = "//tools/bazel:pytest_main.py",
        args = ["$(rootpath %s)" % src] + args,
        deps = deps,
        data = data + [
            "//:pyproject.toml",
            "@local_python//:site_packages.txt",
        ],
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )

def py_module_binary(name, module, deps = [], data = [], **kwargs):
    """A py_binary that runs `python -m <module>` (tools/bazel/run_module.py).

    Args:
      name: target name.
      module: dotted module name, e.g. "env_server.serve".
      deps: py_library targets providing the module and what it imports.
      data: extra runfiles.
      **kwargs: passed to py_binary.
    """
    native.py_binary(
        name = name,
        srcs = ["//tools/bazel:run_module.py"],
        main = "//tools/bazel:run_module.py",
        args = [module],
        deps = deps,
        data = data,
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
