"""Why does a failing C++ argument check crash instead of raising? (issue 15)

On the GPU machine's own torch build (2.11), a failing ``TORCH_CHECK`` in
fastattr's extension whose message formats an integer once killed the process
(segmentation fault) instead of raising; checks with string-only messages
raised. Hypothesis: the extension is compiled by a different compiler /
libstdc++ than the one torch was built with and loads at run time, so the
``std::ostringstream`` / ``std::string`` built inline in the extension does
not match the library code it is handed to.

This probe tests it directly:

1. prints what torch was built with (compiler, C++11 ABI flag), the C++
   compilers on the machine and the libstdc++ the process loads;
2. builds one tiny extension per compiler found (``load_inline``, the same
   flags torch gives any extension), each with a check that formats an int
   and one that formats a string, and calls both in a fresh process;
3. calls one of fastattr's own integer-formatting checks in a fresh process.

A crash shows as ``CRASH (signal N)``; the expected outcome is ``raises
RuntimeError``. Prints a markdown report.

    python benchmarks/abi_probe.py [--compilers c++ /usr/bin/g++ ...] [--skip-build]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SOURCE = r"""
#include <torch/extension.h>
void check_int(int64_t n) { TORCH_CHECK(n < 0, "n must be negative, got ", n); }
void check_str(const std::string& s) { TORCH_CHECK(s.empty(), "s must be empty, got ", s); }
"""

CALL = """
import sys, importlib.util
spec = importlib.util.spec_from_file_location("{name}", "{path}")
import torch
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
try:
    getattr(mod, "{fn}")({arg})
except RuntimeError as e:
    print("raises RuntimeError:", str(e).splitlines()[0][:80]); sys.exit(0)
print("no error raised"); sys.exit(3)
"""

FASTATTR_CALL = """
import sys, torch, fastattr
try:
    # guided_max_pool2d checks the input's rank and formats it (an int) into the message
    torch.ops.fastattr.guided_max_pool2d(torch.zeros(1, 1, 1, 1, 1), [2, 2], [2, 2], [0, 0], [1, 1], False, "reference")
except RuntimeError as e:
    print("raises RuntimeError:", str(e).splitlines()[0][:80]); sys.exit(0)
print("no error raised"); sys.exit(3)
"""


def _run(cmd, **kw) -> tuple[int, str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _outcome(rc: int, text: str) -> str:
    if rc < 0:
        return f"CRASH (signal {signal.Signals(-rc).name})"
    if rc == 0:
        return text.splitlines()[-1] if text else "ok"
    return f"exit {rc}: {text.splitlines()[-1][:100] if text else ''}"


def _version(compiler: str) -> str:
    rc, out = _run([compiler, "--version"])
    return out.splitlines()[0] if rc == 0 and out else "?"


def _libstdcxx_of(compiler: str) -> str:
    rc, out = _run([compiler, "-print-file-name=libstdc++.so.6"])
    return os.path.realpath(out) if rc == 0 else "?"


def build(compiler: str, workdir: Path) -> tuple[str, Path | None, str]:
    """Build the tiny extension with ``compiler`` in a fresh process; returns
    (compiler, path of the .so or None, log tail)."""
    tag = "".join(c if c.isalnum() else "_" for c in compiler).strip("_")
    build_dir = workdir / tag
    build_dir.mkdir(parents=True, exist_ok=True)
    script = (
        "import torch\nfrom torch.utils.cpp_extension import load_inline\n"
        f"m = load_inline('probe_{tag}', cpp_sources=[{SOURCE!r}], functions=['check_int', 'check_str'], "
        f"build_directory={str(build_dir)!r}, verbose=True)\nprint('BUILT', m.__file__)\n"
    )
    env = dict(os.environ, CXX=compiler)
    rc, out = _run([sys.executable, "-c", script], env=env, timeout=240)
    so = next((Path(line.split()[1]) for line in out.splitlines() if line.startswith("BUILT ")), None)
    flags = next((line for line in out.splitlines() if "-c " in line and "main.cpp" in line), "")
    return compiler, so if rc == 0 else None, (flags[:400] if so else out[-600:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compilers", nargs="*", default=None, help="C++ compilers to build the probe with")
    p.add_argument("--skip-build", action="store_true", help="only the environment and fastattr's own check")
    args = p.parse_args(argv)

    import torch

    lines = ["# C++ check-failure probe", ""]
    config = torch.__config__.show().splitlines()
    lines += ["torch " + torch.__version__ + ": " + "; ".join(s.strip() for s in config if "GCC" in s or "C++ Version" in s
                                                             or "CXX_COMPILER" in s)[:300],
              f"torch C++11 ABI: {torch.compiled_with_cxx11_abi()}"]
    with open("/proc/self/maps") as f:
        loaded = sorted({line.split()[-1] for line in f if "libstdc++" in line})
    lines.append(f"libstdc++ loaded by this process (after importing torch): {', '.join(loaded) or 'none'}")
    candidates = args.compilers or [os.environ.get("CXX", "c++"), "g++", "/usr/bin/g++", "/opt/gcc/bin/g++", "clang++"]
    compilers, seen = [], set()
    for c in candidates:
        path = shutil.which(c)
        if path and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            compilers.append(path)
    lines += ["", "| compiler | version | its libstdc++ |", "|---|---|---|"]
    lines += [f"| {c} | {_version(c)} | {_libstdcxx_of(c)} |" for c in compilers]
    for c in compilers:  # a wrapper script shows what it adds to the real compiler's command line
        with open(c, "rb") as f:
            head = f.read(600)
        if head.startswith(b"#!"):
            text = head.decode(errors="replace").replace("\n", " ; ")
            lines.append(f"{c} is a script: `{text[:500]}`")

    ext = next(iter(sorted((ROOT / "python" / "fastattr").glob("_C*.so"))), None)
    if ext is not None:
        rc, out = _run(["ldd", str(ext)])
        std = [line.strip() for line in out.splitlines() if "stdc++" in line or "libgcc_s" in line]
        rc, comment = _run(["readelf", "-p", ".comment", str(ext)])
        made_by = sorted({line.split("]", 1)[1].strip() for line in comment.splitlines() if "]" in line})
        lines += ["", f"fastattr extension {ext.name}: links {'; '.join(std) or '?'}; compiled by {'; '.join(made_by)[:200]}"]
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'python'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        rc, out = _run([sys.executable, "-c", FASTATTR_CALL], env=env, timeout=120)
        lines.append(f"fastattr check that formats an int (guided_max_pool2d on a 5-D input): **{_outcome(rc, out)}**")

    if not args.skip_build:
        lines += ["", "| probe built with | int message | string message | compile flags |", "|---|---|---|---|"]
        with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(len(compilers) or 1) as pool:
            for compiler, so, log in pool.map(lambda c: build(c, Path(tmp)), compilers):
                if so is None:
                    lines.append(f"| {compiler} | build failed | | {log.replace('|', '/').replace(chr(10), ' ')[:300]} |")
                    continue
                results = []
                for fn, arg in (("check_int", "5"), ("check_str", "'x'")):
                    rc, out = _run([sys.executable, "-c", CALL.format(name=so.stem.split(".")[0], path=so, fn=fn, arg=arg)],
                                   timeout=120)
                    results.append(_outcome(rc, out))
                lines.append(f"| {compiler} | {results[0]} | {results[1]} | `{log[:300]}` |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
