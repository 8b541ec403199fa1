"""fastattr.captum.patch(): Captum's classes of the same names become
fastattr's in captum.attr and in their defining modules; unpatch() restores
Captum's exact objects; code written against Captum runs unchanged under
patch() and gives Captum's results."""

import importlib
import runpy
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr")

import fastattr.captum as fc  # noqa: E402

F64 = torch.float64
TWINS = ["IntegratedGradients", "Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution", "NoiseTunnel",
         "Occlusion", "FeatureAblation"]
# Captum's objects as imported before any patch (this module is imported first).
ORIGINAL = {name: getattr(captum_attr, name) for name in TWINS}
DEFINING = {name: ORIGINAL[name].__module__ for name in TWINS}
UNTOUCHED = ["DeepLift", "LayerIntegratedGradients", "GradientShap", "ShapleyValueSampling", "Lime", "KernelShap"]
UNTOUCHED_ORIGINAL = {name: getattr(captum_attr, name) for name in UNTOUCHED}


@pytest.fixture(autouse=True)
def _clean():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    fc.unpatch()


def test_patch_replaces_captum_attr_and_defining_modules():
    assert DEFINING["IntegratedGradients"] == "captum.attr._core.integrated_gradients"
    fc.patch()
    for name in TWINS:
        assert getattr(captum_attr, name) is getattr(fc, name), name
        assert getattr(sys.modules[DEFINING[name]], name) is getattr(fc, name), name
        assert getattr(importlib.import_module(DEFINING[name]), name) is getattr(fc, name), name
    from captum.attr import IntegratedGradients
    from captum.attr._core.occlusion import Occlusion
    assert IntegratedGradients is fc.IntegratedGradients and Occlusion is fc.Occlusion


def test_classes_fastattr_does_not_implement_stay_captums():
    fc.patch()
    for name in UNTOUCHED:
        assert getattr(captum_attr, name) is UNTOUCHED_ORIGINAL[name], name
    # fastattr's own classes without a Captum twin are not added to Captum.
    for name in ("RISE", "GNLIntegratedGradients", "CausalATE"):
        assert not hasattr(captum_attr, name)


def test_unpatch_restores_the_exact_objects_and_patch_is_idempotent():
    fc.patch()
    fc.patch()  # idempotent: the originals are still Captum's, not fastattr's
    fc.unpatch()
    for name in TWINS:
        assert getattr(captum_attr, name) is ORIGINAL[name], name
        assert getattr(sys.modules[DEFINING[name]], name) is ORIGINAL[name], name
    fc.unpatch()  # a second unpatch changes nothing
    assert captum_attr.IntegratedGradients is ORIGINAL["IntegratedGradients"]


def test_patched_context_manager():
    with fc.patched():
        assert captum_attr.Saliency is fc.Saliency
    assert captum_attr.Saliency is ORIGINAL["Saliency"]
    fc.patch()
    with fc.patched():
        pass
    assert captum_attr.Saliency is fc.Saliency  # it leaves an earlier patch() in place


# A user's script, written against Captum: it imports inside the function, so a
# run under patch() gets whatever the imports give at that time.
SCRIPT = textwrap.dedent('''
    import torch
    from captum.attr import (IntegratedGradients, Saliency, InputXGradient, GuidedBackprop, Deconvolution,
                             NoiseTunnel, FeatureAblation)
    from captum.attr._core.occlusion import Occlusion


    def explain(model, image, tokens, scale):
        inputs = (image, tokens)
        out = {}
        ig = IntegratedGradients(model)
        out["ig"], out["ig_delta"] = ig.attribute(inputs, baselines=(0.0, tokens.mean(0, keepdim=True)), target=2,
                                                  additional_forward_args=(scale,), n_steps=16,
                                                  internal_batch_size=9, return_convergence_delta=True)
        out["delta_again"] = ig.compute_convergence_delta(out["ig"], (0.0, tokens.mean(0, keepdim=True)), inputs,
                                                          target=2, additional_forward_args=(scale,))
        out["local_ig"] = IntegratedGradients(model, multiply_by_inputs=False).attribute(
            inputs, target=torch.tensor([0, 1, 2]), additional_forward_args=scale, method="riemann_middle")
        out["saliency"] = Saliency(model).attribute(inputs, target=[1, 0, 3], additional_forward_args=(scale,))
        out["ixg"] = InputXGradient(model).attribute(inputs, target=torch.tensor(3), additional_forward_args=scale)
        out["gbp"] = GuidedBackprop(model).attribute(inputs, target=(1,), additional_forward_args=(scale,))
        out["deconv"] = Deconvolution(model).attribute(inputs, target=0, additional_forward_args=(scale,))
        out["occlusion"] = Occlusion(model).attribute(inputs, sliding_window_shapes=((1, 3, 3), (2, 2)),
                                                      strides=((1, 2, 2), 1), target=1, baselines=(0.1, 0.0),
                                                      additional_forward_args=(scale,), perturbations_per_eval=4)
        out["ablation"] = FeatureAblation(model).attribute(
            inputs, target=[2, 2, 0], additional_forward_args=(scale,), perturbations_per_eval=3,
            feature_mask=(torch.arange(36).view(1, 1, 6, 6).expand(1, 2, 6, 6) // 9,
                          torch.arange(20).view(1, 5, 4) // 4))
        # stdevs=0: the noisy copies are the inputs themselves, whatever the draws.
        out["smoothgrad"] = NoiseTunnel(Saliency(model)).attribute(
            inputs, nt_type="vargrad", nt_samples=4, nt_samples_batch_size=3, stdevs=0.0, target=1,
            additional_forward_args=(scale,))
        out["classes"] = [type(c).__module__ for c in (ig, Occlusion(model), NoiseTunnel(Saliency(model)))]
        return out
''')


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.relu = nn.ReLU()
        self.emb = nn.Linear(4, 6)
        self.head = nn.Linear(3 * 16 + 6, 4)

    def forward(self, image, tokens, scale):
        h = torch.cat([self.relu(self.conv(image)).flatten(1), self.relu(self.emb(tokens)).mean(1)], 1)
        return self.head(h) * scale


def test_captum_script_runs_unchanged_under_patch(tmp_path):
    path = tmp_path / "user_script.py"
    path.write_text(SCRIPT)
    torch.manual_seed(0)
    model = Net().to(F64).eval()
    image, tokens = torch.randn(3, 2, 6, 6, dtype=F64), torch.randn(3, 5, 4, dtype=F64)
    scale = torch.rand(3, 1, dtype=F64) + 0.5

    ref = runpy.run_path(str(path))["explain"](model, image, tokens, scale)
    fc.patch()
    ours = runpy.run_path(str(path))["explain"](model, image, tokens, scale)
    assert all(m.startswith("captum.") for m in ref.pop("classes"))
    assert ours.pop("classes") == ["fastattr.captum"] * 3
    assert ref.keys() == ours.keys()
    for key in ref:
        r, o = ref[key], ours[key]
        r, o = (r if isinstance(r, tuple) else (r,)), (o if isinstance(o, tuple) else (o,))
        assert len(r) == len(o), key
        for a, b in zip(o, r):
            assert a.shape == b.shape, key
            torch.testing.assert_close(a.to(F64), b.to(F64), rtol=1e-5, atol=1e-9 * max(1.0, float(b.abs().max())),
                                       msg=key)
    assert ref["ig_delta"].abs().max() > 1e-8  # 16 steps leave a gap: the delta comparison can fail


def test_captum_internals_and_noise_tunnel_over_captum_classes_under_patch():
    """Captum classes fastattr lacks keep working under patch: a NoiseTunnel over
    Captum's DeepLift runs Captum's own NoiseTunnel (same draws, same result), and
    LayerIntegratedGradients still uses Captum's IntegratedGradients inside."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).to(F64).eval()
    x = torch.randn(4, 5, dtype=F64)

    def run():
        torch.manual_seed(123)
        smooth = captum_attr.NoiseTunnel(captum_attr.DeepLift(model)).attribute(x, nt_samples=3, stdevs=0.3,
                                                                                target=1)
        layer = captum_attr.LayerIntegratedGradients(model, model[0]).attribute(x, target=2, n_steps=8)
        return smooth, layer

    ref = run()
    fc.patch()
    assert captum_attr.NoiseTunnel is fc.NoiseTunnel
    ours = run()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_readme_patch_example():
    """The README's patch() example runs after the quick start, gives Captum's IG,
    and leaves Captum unpatched."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## Quick start"):text.index("## What works")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2 and "patch()" in blocks[1]
    scope: dict = {}
    exec(compile(blocks[0], "README quick start", "exec"), scope)
    exec(compile(blocks[1], "README patch example", "exec"), scope)
    assert captum_attr.IntegratedGradients is ORIGINAL["IntegratedGradients"]
    assert type(scope["ig"]) is fc.IntegratedGradients
    ref, ref_delta = captum_attr.IntegratedGradients(scope["model"]).attribute(
        scope["x"][None], baselines=0.0, target=scope["label"], n_steps=32, return_convergence_delta=True)
    torch.testing.assert_close(scope["ig_attr"], ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    torch.testing.assert_close(scope["delta"], ref_delta, rtol=0, atol=1e-3 * float(ref.abs().sum()))
    assert scope["smooth"].shape == scope["x"][None].shape and torch.isfinite(scope["smooth"]).all()
