"""End-to-end methods under pytest-benchmark: fastattr against Captum on the
cases of e2e.py (torchvision resnet18 at 224x224, B=4, n_steps=32; the bundled
small CNN at 64x64, B=16), plus the bare model ("model limit") in the same run.
Peak memory (fresh process per case) and the ratios go into extra_info; the
markdown table in RESULTS.md comes from `python benchmarks/e2e.py`.

    pytest benchmarks/bench_methods.py --benchmark-only [-k cpu|cuda]
"""

import pytest
import torch

import e2e

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]
_LIMITS = {}


def _limit(case, device):
    key = (case.name, device)
    if key not in _LIMITS:
        _LIMITS[key] = e2e.model_limit(case, device, repeats=1)
    return _LIMITS[key]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case_name", ["resnet18-224", "small-cnn-64"])
@pytest.mark.parametrize("method", e2e.METHODS)
@pytest.mark.parametrize("impl", ["fastattr", "captum", "captum_batched"])
def test_method(benchmark, device, case_name, method, impl):
    pytest.importorskip("captum")
    if method == "guided_backprop" and impl == "captum_batched":
        pytest.skip("guided backprop has no internal batching in Captum")
    case = e2e.CASES[case_name]
    benchmark.group = f"{case_name}-{method}-{device}"
    run = e2e.make_runner(case, method, impl, device)
    out = run()
    assert out.shape == case.inputs(device).shape and torch.isfinite(out).all()
    benchmark.pedantic(lambda: (run(), e2e._sync(device)), rounds=2, warmup_rounds=0, iterations=1)
    limit, best = _limit(case, device)
    benchmark.extra_info["model_limit_s"] = limit
    benchmark.extra_info["model_limit_batch"] = best
    benchmark.extra_info["ratio_to_model_limit"] = benchmark.stats.stats.median / limit
    benchmark.extra_info["peak_memory_mib"] = e2e.peak_memory_mb(case_name, method, impl, device)
