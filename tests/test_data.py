"""fastattr.data: the procedural "shapes" and "lesions" sets."""

import hashlib

import numpy as np
import pytest
import torch

from fastattr import data


def _digest(ds, i):
    img, label, mask = ds.render(i)
    h = hashlib.sha256(img.tobytes())
    h.update(np.asarray(label).astype(np.int64).tobytes())
    h.update(mask.tobytes())
    return h.hexdigest()[:16]


def test_available_and_classes():
    assert data.available() == ["lesions", "shapes"]
    assert data.classes("shapes") == ["circle", "square", "triangle", "cross", "ring"]
    assert data.classes("lesions") == ["lesion"]
    assert data.info("shapes")["task"] == "classification"
    assert data.info("lesions")["task"] == "segmentation"
    assert data.info("lesions")["image_size"] == [128, 128]


def test_unknown_names_are_clear():
    with pytest.raises(ValueError, match="available: lesions, shapes"):
        data.load("mnist")
    with pytest.raises(ValueError, match="train, val, test"):
        data.load("shapes", split="training")
    with pytest.raises(ValueError, match="positive"):
        data.load("shapes", size=0)


@pytest.mark.parametrize("name", ["shapes", "lesions"])
def test_split_sizes_and_indexing(name):
    ds = data.load(name)
    assert ds.split == "test" and len(ds) == 2000  # room for a 1,000-image job
    small = data.load(name, "test", size=3)
    assert len(small) == 3
    # The first items do not depend on the requested size; negative indices work.
    assert torch.equal(small[2][0], ds[2][0])
    assert torch.equal(small[-1][0], small[2][0])
    with pytest.raises(IndexError):
        small[3]
    bigger = data.load(name, "val", size=5000)  # the index space is unbounded
    assert len(bigger) == 5000 and bigger[4999][0].shape[0] == 3


@pytest.mark.parametrize("name", ["shapes", "lesions"])
def test_deterministic_and_splits_differ(name):
    a = data.load(name, "test")
    b = data.load(name, "test")
    for i in (0, 7):
        ia, la, ma = a[i]
        ib, lb, mb = b[i]
        assert torch.equal(ia, ib) and torch.equal(ma, mb)
        assert torch.equal(torch.as_tensor(la), torch.as_tensor(lb))
        assert torch.equal(a[i][0], ia)  # same object, asked twice
    images = {split: data.load(name, split)[0][0] for split in ("train", "val", "test")}
    assert not torch.equal(images["train"], images["val"])
    assert not torch.equal(images["val"], images["test"])
    assert not torch.equal(images["train"], images["test"])
    assert not torch.equal(a[0][0], a[1][0])


# The generator is part of the contract: the shipped weights were trained and
# evaluated on exactly these items. If this fails on purpose (the generator
# changed), retrain the models and update the digests.
GOLDEN = {
    ("shapes", "test", 0): "85246c4f3a3c4639",
    ("shapes", "train", 123): "8e668354565148fa",
    ("lesions", "test", 0): "7c06b56319b3a6f2",
    ("lesions", "val", 45): "8c279f31b07b5716",
}


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_items_match_golden_digests(key):
    name, split, index = key
    assert _digest(data.load(name, split), index) == GOLDEN[key]


def test_shapes_items():
    ds = data.load("shapes", "test", size=40)
    for i in range(len(ds)):
        image, label, mask = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert torch.equal(image, (image * 255).round() / 255)  # 8-bit values
        assert isinstance(label, int) and 0 <= label < 5 and label == ds.label_of(i)
        assert mask.dtype == torch.bool and mask.shape == (64, 64)
        # Objects lie fully inside the image and are large (half-extent >= 8 px).
        assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        assert 60 <= int(mask.sum()) <= 1000


def _ring_around(mask: np.ndarray, width: int) -> np.ndarray:
    grown = mask.copy()
    for _ in range(width):
        g = grown.copy()
        g[1:] |= grown[:-1]
        g[:-1] |= grown[1:]
        g[:, 1:] |= grown[:, :-1]
        g[:, :-1] |= grown[:, 1:]
        grown = g
    return grown & ~mask


def test_shapes_mask_matches_class_and_image():
    ds = data.load("shapes", "test", size=200)
    contrast_ok = 0
    for i in range(len(ds)):
        img, label, mask = ds.render(i)
        ys, xs = np.nonzero(mask)
        cy, cx = int(round(ys.mean() - 0.5)), int(round(xs.mean() - 0.5))
        centre_filled = mask[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2].any()
        # Rings have a hole at their centre; every other shape covers it.
        assert centre_filled == (data.classes("shapes")[label] != "ring"), (i, label)
        # The mask sits on the object: its colour differs from just around it.
        inside = img[mask].astype(float).mean(0)
        around = img[_ring_around(mask, 3)].astype(float).mean(0)
        contrast_ok += np.linalg.norm(inside - around) / 255 > 0.25
    assert contrast_ok >= 0.95 * len(ds)  # a mask shifted by 5 px: about half


def test_shapes_class_balance():
    ds = data.load("shapes", "test", size=1000)
    labels = np.array([ds.label_of(i) for i in range(len(ds))])
    assert np.bincount(labels, minlength=5).tolist() == [200] * 5
    assert not np.array_equal(labels, np.arange(1000) % 5)  # balanced, but not a fixed cycle
    train = data.load("shapes", "train", size=1000)
    counts = np.bincount([train.label_of(i) for i in range(len(train))], minlength=5)
    assert counts.tolist() == [200] * 5


def test_lesions_items():
    ds = data.load("lesions", "test", size=30)
    contrast = []
    for i in range(len(ds)):
        image, label, mask = ds[i]
        assert image.dtype == torch.float32 and image.shape == (3, 128, 128)
        assert 0.0 <= image.min() and image.max() <= 1.0
        assert label.dtype == torch.float32 and label.shape == (1, 128, 128)
        assert set(label.unique().tolist()) <= {0.0, 1.0}
        assert mask.dtype == torch.bool and mask.shape == (128, 128)
        assert torch.equal(label[0].bool(), mask)
        assert 30 <= int(mask.sum()) <= 0.5 * mask.numel()  # at least one lesion, never the whole image
        m = mask.numpy()
        grey = image.mean(0).numpy()
        contrast.append(grey[_ring_around(m, 2)].mean() - grey[m].mean())
    # Lesions are darker than the tissue just around them; the edges line up
    # (with the mask shifted by 2 px the median contrast drops to ~0.15).
    assert min(contrast) > 0.08 and np.median(contrast) > 0.18, contrast


def test_batch_and_dataloader():
    ds = data.load("shapes", "val", size=8)
    images, labels, masks = ds.batch(range(8))
    assert images.shape == (8, 3, 64, 64) and labels.dtype == torch.int64 and masks.shape == (8, 64, 64)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    x, y, m = next(iter(loader))
    assert torch.equal(x, images[:4]) and torch.equal(y, labels[:4]) and torch.equal(m, masks[:4])
    seg = data.load("lesions", "val", size=2)
    images, labels, masks = seg.batch([0, 1])
    assert labels.shape == (2, 1, 128, 128) and torch.equal(labels[:, 0].bool(), masks)
