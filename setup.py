"""Build of fastattr and its compiled ops (`fastattr._C`).

CUDA kernels are compiled whenever torch is a CUDA build and a CUDA toolkit is
found, also on machines without a GPU (set TORCH_CUDA_ARCH_LIST to choose the
architectures; the default covers Ampere and Hopper, H100/H200 = 9.0).
FASTATTR_FORCE_CPU=1 builds the CPU kernels only. DEBUG=1 builds without
optimisation and with debug symbols.
"""

import glob
import os
import sys
import sysconfig
from pathlib import Path

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = Path(__file__).parent.resolve()
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;9.0+PTX"


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _cuda_wanted():
    if _flag("FASTATTR_FORCE_CPU"):
        return False, "FASTATTR_FORCE_CPU is set"
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if cpp_extension.CUDA_HOME is None:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    return True, f"torch CUDA {torch.version.cuda}, toolkit at {cpp_extension.CUDA_HOME}"


def _torch_cuda_include_dirs():
    # CUDA builds of torch ship headers that ATen/cuda includes (cuSPARSE and
    # friends) in site-packages/nvidia/*/include, not in the system toolkit.
    dirs = []
    for site in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        dirs += sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
    return dirs


def _extension():
    with_cuda, reason = _cuda_wanted()
    debug = _flag("DEBUG")
    sources = sorted(
        str(p)
        for pattern in ("csrc/*.cpp", "csrc/ops/*.cpp", "csrc/cpu/*.cpp")
        for p in ROOT.glob(pattern)
    )
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    cxx_flags += ["-DPy_LIMITED_API=0x03090000"]
    if "OpenMP" in torch.__config__.parallel_info() or "openmp" in torch.__config__.parallel_info():
        cxx_flags.append("-fopenmp")
    define_macros = [("WITH_PYTHON", None)]
    extra_compile_args = {"cxx": cxx_flags}
    include_dirs = [str(ROOT / "csrc")]
    if with_cuda:
        sources += sorted(str(p) for p in ROOT.glob("csrc/cuda/*.cu"))
        define_macros.append(("WITH_CUDA", None))
        nvcc_flags = ["-O0", "-g", "-lineinfo"] if debug else ["-O3", "-lineinfo"]
        nvcc_flags += os.environ.get("NVCC_FLAGS", "").split()
        extra_compile_args["nvcc"] = nvcc_flags
        include_dirs += _torch_cuda_include_dirs()
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "the visible GPUs")
        print(f"fastattr: building CPU and CUDA kernels ({reason}; arch {arch})", file=sys.stderr)
        ext_cls = cpp_extension.CUDAExtension
    else:
        print(f"fastattr: building CPU kernels only ({reason})", file=sys.stderr)
        ext_cls = cpp_extension.CppExtension
    return ext_cls(
        "fastattr._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=["-fopenmp"] if "-fopenmp" in cxx_flags else [],
        py_limited_api=True,
    )


if __name__ == "__main__":
    # Two compile jobs at most: nvcc on ATen headers needs ~2 GB per job.
    os.environ.setdefault("MAX_JOBS", "2")
    setup(
        name="fastattr",
        version="0.1.0",
        description="Fast neural-network attribution: C++/CUDA kernels for integrated gradients, "
        "guided backprop and perturbation methods",
        packages=find_packages("python"),
        package_dir={"": "python"},
        package_data={"fastattr": ["assets/*", "assets/**/*"]},
        ext_modules=[_extension()],
        cmdclass={"build_ext": cpp_extension.BuildExtension},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
        python_requires=">=3.10",
        install_requires=["torch>=2.6", "numpy", "safetensors", "tqdm", "pillow"],
        extras_require={
            "test": ["pytest", "pytest-benchmark", "hypothesis", "captum", "torchvision", "expecttest"],
        },
        entry_points={"console_scripts": ["fastattr = fastattr.cli:main"]},
    )
