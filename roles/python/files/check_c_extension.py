"""Compile and import a C extension against this interpreter's headers, as Triton does at run time.

Triton (and so unsloth and every Triton kernel) builds a small launcher with the system C compiler
and Python.h the first time a kernel runs; a host without them fails then, not at deploy time.
Prints what it used; exits non-zero with the compiler's message when it cannot.
"""

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

SOURCE = """
#include <Python.h>
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "vlmkit_c_check", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_vlmkit_c_check(void) { return PyModule_Create(&module); }
"""


def main() -> int:
    compiler = shutil.which("cc") or shutil.which("gcc")
    include = sysconfig.get_paths()["include"]
    if compiler is None:
        print("no C compiler (cc or gcc) on PATH", file=sys.stderr)
        return 1
    if not Path(include, "Python.h").is_file():
        print(
            f"no Python.h in {include} (the interpreter's headers: python{sys.version_info[0]}.{sys.version_info[1]}-dev)",
            file=sys.stderr,
        )
        return 1
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch, "check.c")
        source.write_text(SOURCE)
        target = Path(scratch, "vlmkit_c_check" + sysconfig.get_config_var("EXT_SUFFIX"))
        result = subprocess.run(
            [compiler, "-shared", "-fPIC", "-I", include, str(source), "-o", str(target)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            print(f"{compiler} could not build against {include}: {result.stderr.strip()[-800:]}", file=sys.stderr)
            return 1
        spec = importlib.util.spec_from_file_location("vlmkit_c_check", target)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    print(f"{compiler} built and {sys.executable} imported a C extension against {include}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
