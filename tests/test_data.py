import gzip
import shutil

import pytest
import torch

from conftest import FASHION_SYSTEM, SHARED, need
from dla.data.batches import eval_batches, random_crop_flip, train_batches
from dla.data.vision import import_dataset, load_image_data, locate, require
from dla.errors import DataError


def test_import_mnist_verifies_and_loads(data_root):
    loc = locate("mnist", data_root)
    assert loc.status == "present" and not loc.bad and loc.source == "data root"
    data = load_image_data("mnist", data_root, val_size=5000, download=False)
    assert data.train.x.shape == (55000, 1, 28, 28) and data.train.x.dtype == torch.uint8
    assert data.val.x.shape == (5000, 1, 28, 28) and data.test.x.shape == (10000, 1, 28, 28)
    assert data.train.y.dtype == torch.int64 and set(data.test.y.tolist()) == set(range(10))


def test_validation_split_is_fixed_and_disjoint(data_root):
    a = load_image_data("mnist", data_root, val_size=1000, split_seed=3, download=False)
    b = load_image_data("mnist", data_root, val_size=1000, split_seed=3, download=False)
    c = load_image_data("mnist", data_root, val_size=1000, split_seed=4, download=False)
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    # no validation image is also a training image (by exact pixels, on a sample)
    train_keys = {bytes(x.flatten().tolist()) for x in a.train.x[:20000]}
    assert not any(bytes(x.flatten().tolist()) in train_keys for x in a.val.x[:200])


def test_corrupted_copy_fails_on_checksum(tmp_path):
    need(SHARED / "mnist", "the shared MNIST copy")
    bad = tmp_path / "bad"
    shutil.copytree(SHARED / "mnist", bad)
    raw = bytearray(gzip.decompress((bad / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="checksum mismatch .*t10k-labels"):
        import_dataset("mnist", bad, tmp_path / "root")


def test_file_corrupted_after_import_fails_on_load(tmp_path):
    need(SHARED / "mnist", "the shared MNIST copy")
    root = tmp_path / "root"
    import_dataset("mnist", SHARED / "mnist", root)
    path = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    assert locate("mnist", root).status == "corrupt"
    with pytest.raises(DataError, match="checksum mismatch") as exc:
        load_image_data("mnist", root, val_size=100, download=False)
    assert "dla data import mnist" in str(exc.value)


def test_missing_data_offline_names_the_fix(tmp_path):
    with pytest.raises(DataError) as exc:
        require("mnist", tmp_path / "empty", download=False)
    message = str(exc.value)
    assert "MNIST is missing" in message and "dla data import mnist" in message and "\n" not in message


def test_fashion_mnist_found_in_debian_folder(tmp_path):
    need(FASHION_SYSTEM, "Debian's dataset-fashion-mnist")
    loc = locate("fashion-mnist", tmp_path / "empty")
    assert loc.status == "present" and loc.source == "system"
    data = load_image_data("fashion-mnist", tmp_path / "empty", val_size=5000, download=False)
    assert data.train.x.shape == (55000, 1, 28, 28) and data.source == "Fashion-MNIST"


def test_cifar10_test_set_import(tmp_path):
    need(SHARED / "cifar10-test", "the shared CIFAR-10 test set")
    loc = import_dataset("cifar10", SHARED / "cifar10-test", tmp_path)
    assert loc.status == "partial" and loc.missing == ["cifar10_train_jpeg_q75.npz"]
    with pytest.raises(DataError, match="missing \\(cifar10_train_jpeg_q75.npz\\)"):
        load_image_data("cifar10", tmp_path, val_size=100, download=False)


def test_train_batches_cover_each_image_once_and_shard_across_processes():
    x = torch.arange(10 * 4, dtype=torch.uint8).view(10, 1, 2, 2)
    y = torch.arange(10)
    single = list(train_batches(x, y, 4, torch.Generator().manual_seed(0)))
    assert len(single) == 2 and all(len(b[1]) == 4 for b in single)  # last partial batch dropped
    seen = torch.cat([b[1] for b in single])
    assert len(set(seen.tolist())) == 8
    shards = [list(train_batches(x, y, 4, torch.Generator().manual_seed(0), rank=r, world_size=2)) for r in (0, 1)]
    for i, (xb, yb) in enumerate(single):
        assert torch.equal(torch.cat([shards[0][i][1], shards[1][i][1]]), yb)
        assert torch.equal(torch.cat([shards[0][i][0], shards[1][i][0]]), xb)
    assert single[0][0].dtype == torch.float32 and float(single[0][0].max()) <= 1.0


def test_eval_batches_shards_partition_the_set():
    x = torch.zeros(11, 1, 2, 2, dtype=torch.uint8)
    y = torch.arange(11)
    parts = [torch.cat([b[1] for b in eval_batches(x, y, 3, r, 2)]) for r in (0, 1)]
    assert torch.equal(torch.cat(parts), y)


def test_random_crop_flip_is_a_shifted_window():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8) % 200 + 1
    out = random_crop_flip(x, torch.Generator().manual_seed(1), pad=2, flip=False)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(padded[i, :, dy : dy + 8, dx : dx + 8], out[i])]
        assert windows, "each output must be one window of the padded input"
    flipped = random_crop_flip(x, torch.Generator().manual_seed(0), pad=0, flip=True)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))
