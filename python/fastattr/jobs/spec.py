"""A job's parameters, their checking, and the fingerprint that guards resumption."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import platform
from dataclasses import asdict, dataclass, field, fields

import torch

DTYPES = {
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
    "float64": torch.float64, "double": torch.float64, "fp64": torch.float64,
    "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
# Metrics ``fastattr run --metrics`` computes per image (fastattr.metrics).
METRICS = ("deletion", "insertion", "pointing")
# What a job does with an image it cannot read (--on-error).
ON_ERROR = ("fail", "skip")
# Keywords a method's options cannot set: the job supplies them.
RESERVED_OPTIONS = ("model", "inputs", "target", "generator")


class JobError(Exception):
    """A problem with a job's parameters or output directory, reported without a traceback."""


@dataclass
class JobConfig:
    """Everything ``fastattr run`` takes. Fields in :data:`OPERATIONAL` do not change the result."""

    model: str
    data: str
    method: str
    out: str
    method_options: dict = field(default_factory=dict)
    target: str = "auto"
    batch_size: int = 16
    device: str = "cpu"
    dtype: str = "float32"
    limit: int | None = None
    split: str = "test"
    format: str = "safetensors"
    shard_size: int = 256
    heatmaps: bool = False
    seed: int = 0
    input_size: tuple[int, int] | None = None
    resize: str = "crop"
    metrics: tuple[str, ...] = ()
    output_key: str | int | None = None
    max_memory: int | None = None
    # operational
    overwrite: bool = False
    quiet: bool = False
    progress: bool | None = None
    num_workers: int = 0
    threads: int | None = None
    verify: bool = False
    dist_timeout: float = 86400.0
    on_error: str = "fail"
    progress_interval: float = 30.0

    def check(self) -> None:
        from .storage import FORMATS

        if self.batch_size < 1:
            raise JobError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.shard_size < 1:
            raise JobError(f"--shard-size must be at least 1, got {self.shard_size}")
        if self.limit is not None and self.limit < 0:
            raise JobError(f"--limit must be non-negative, got {self.limit}")
        if self.format not in FORMATS:
            raise JobError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.dtype not in DTYPES:
            raise JobError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.threads is not None and self.threads < 1:
            raise JobError(f"--threads must be at least 1, got {self.threads}")
        if self.num_workers < 0:
            raise JobError(f"--num-workers must be non-negative, got {self.num_workers}")
        if self.on_error not in ON_ERROR:
            raise JobError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        if self.max_memory is not None:
            self.max_memory = parse_memory(self.max_memory)
        if not self.progress_interval > 0:
            raise JobError(f"--progress-interval must be a positive number of seconds, got {self.progress_interval!r}")
        if self.output_key is not None and not isinstance(self.output_key, (str, int)):
            raise JobError(f"--output-key must be a key (string) or an index (integer), got {self.output_key!r}")
        self.metrics = check_metrics(self.metrics)
        dev = str(self.device)
        if not (dev == "cpu" or dev == "cuda" or dev.startswith("cuda:")):
            raise JobError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def check_metrics(metrics) -> tuple[str, ...]:
    """``--metrics``: a comma-separated string or a sequence of names from
    :data:`METRICS`, each at most once; returned as a tuple in the given order."""
    if metrics is None:
        return ()
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if not isinstance(metrics, (list, tuple)) or not all(isinstance(m, str) for m in metrics):
        raise JobError(f"--metrics must be a comma-separated list of {', '.join(METRICS)}, got {metrics!r}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise JobError(f"--metrics: unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    if len(set(metrics)) != len(metrics):
        raise JobError(f"--metrics names a metric twice: {','.join(metrics)}")
    return tuple(metrics)


OPERATIONAL = ("out", "overwrite", "quiet", "progress", "num_workers", "threads", "verify", "dist_timeout", "device",
               "on_error", "progress_interval", "limit")

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_memory(value) -> int:
    """``--max-memory``: bytes as an int, or a string such as ``"512M"``, ``"2GB"``, ``"1.5G"`` (binary units)."""
    import re

    if isinstance(value, bool):
        raise JobError(f"--max-memory must be a size such as 2G or 512M, got {value!r}")
    if isinstance(value, (int, float)):
        size = value
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _UNITS:
            raise JobError(f"--max-memory must be a size such as 2G, 512M or a number of bytes, got {value!r}")
        size = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(size) or size < 1 << 20:
        raise JobError(f"--max-memory must be at least 1M, got {value!r}")
    return int(size)


def config_keys() -> list[str]:
    return [f.name for f in fields(JobConfig)]


def _jsonable(value) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def resolve_method(name: str, methods: dict):
    if name not in methods:
        raise JobError(f"unknown method {name!r}; choose from: {', '.join(sorted(methods))}")
    return methods[name]


def method_parameters(fn) -> tuple[dict, bool]:
    """The options a method takes (name → default or inspect.Parameter.empty) and whether it takes **kwargs."""
    sig = inspect.signature(fn)
    params, var_kw = {}, False
    for i, (name, p) in enumerate(sig.parameters.items()):
        if p.kind == p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in RESERVED_OPTIONS and i >= 2:
            params[name] = p.default
    return params, var_kw


def resolve_options(method: str, fn, options: dict) -> tuple[dict, dict]:
    """Check ``options`` against ``fn``'s signature.

    Returns ``(call_options, recorded)``: what to pass (only what was given, so the
    method's defaults apply) and the full set for the manifest and fingerprint (the
    given options over the method's JSON-representable defaults).
    """
    params, var_kw = method_parameters(fn)
    for key in options:
        if key in RESERVED_OPTIONS:
            raise JobError(f"option {key!r} of method {method!r} is set by the job and cannot be given")
        if key not in params and not var_kw:
            accepted = ", ".join(sorted(params)) or "none"
            raise JobError(f"method {method!r} has no option {key!r}; its options are: {accepted}")
        if not _jsonable(options[key]):
            raise JobError(f"option {key!r} must be a number, string, boolean, null or list, got {options[key]!r}")
    recorded = {k: v for k, v in params.items() if v is not inspect.Parameter.empty and _jsonable(v)}
    recorded.update(options)
    return dict(options), dict(sorted(recorded.items()))


def takes_generator(fn) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return "generator" in sig.parameters


def versions() -> dict:
    import numpy

    from .. import __version__

    return {"fastattr": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def job_spec(cfg: JobConfig, recorded_options: dict, model_desc: dict, data_desc: dict) -> dict:
    """The parameters that determine the output, in a canonical JSON-able form."""
    v = versions()
    spec = {
        "method": cfg.method,
        "method_options": recorded_options,
        "model": model_desc,
        "data": data_desc,
        "split": cfg.split,
        "target": cfg.target,
        "batch_size": cfg.batch_size,
        "dtype": str(cfg.torch_dtype).replace("torch.", ""),
        "device_type": torch.device(cfg.device).type,
        "format": cfg.format,
        "shard_size": cfg.shard_size,
        "heatmaps": cfg.heatmaps,
        "seed": cfg.seed,
        "seeding": "per shard: sha256('<seed>:<shard>')[:8] seeds torch and the method's generator; "
                   "the model is built under torch.manual_seed(<seed>)",
        "identity": "images by path and sha256 of the file; results kept while both are unchanged",
        "versions": {"fastattr": v["fastattr"], "torch": v["torch"]},
    }
    if cfg.metrics:  # only then, so that jobs without metrics keep their fingerprints
        spec["metrics"] = list(cfg.metrics)
    if cfg.max_memory is not None:  # the automatic chunk size (and so the rounding) depends on it
        spec["max_memory"] = cfg.max_memory
    return spec


def fingerprint(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def spec_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable list of the keys whose values differ."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += spec_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} (existing) vs {json.dumps(b)} (now)")
    return out


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard ``shard``: a function of ``--seed`` and the shard index only."""
    digest = hashlib.sha256(f"{int(seed)}:{int(shard)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def config_dict(cfg: JobConfig) -> dict:
    return asdict(cfg)
