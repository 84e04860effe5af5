"""Finding and reading Fashion-MNIST, and the device-resident batch iterator."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from conftest import write_idx

from cnnbench import data


def test_real_data_loads_whole(real_data):
    train, test = data.load(str(real_data), download=False)
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    # the training set's pixel statistics, widely quoted for Fashion-MNIST
    pixels = train.images.float() / 255
    assert pixels.mean().item() == pytest.approx(0.2860, abs=1e-3)
    assert pixels.std().item() == pytest.approx(0.3530, abs=1e-3)


@pytest.mark.parametrize("gz", [False, True])
def test_reads_raw_and_gzipped_folders(tmp_path, gz):
    root = write_idx(tmp_path / "d", n_train=50, n_test=20, gz=gz)
    train, test = data.load(str(root), download=False)
    assert (len(train), len(test)) == (50, 20)
    assert train.labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_reads_torchvision_layout(tmp_path):
    write_idx(tmp_path / "FashionMNIST" / "raw", n_train=30, n_test=10)
    train, _ = data.load(str(tmp_path), download=False)
    assert len(train) == 30


def test_our_idx_reader_reads_what_torchvisions_does(tmp_path):
    from torchvision.datasets import FashionMNIST

    write_idx(tmp_path / "FashionMNIST" / "raw", n_train=30, n_test=10)
    train, test = data.load(str(tmp_path), download=False)
    for ours, train_split in ((train, True), (test, False)):
        theirs = FashionMNIST(str(data.locate(str(tmp_path), download=False)), train=train_split)
        assert torch.equal(ours.images, theirs.data) and torch.equal(ours.labels, theirs.targets)
        assert ours.labels.dtype == torch.int64 and ours.images.is_contiguous()


def test_root_that_is_a_file(tmp_path, tiny_data, monkeypatch):
    f = tmp_path / "file.txt"
    f.write_text("x")
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-package")
    with pytest.raises(data.DataError, match=r"data.root='.*file.txt' is not a directory; install the Debian package"):
        data.load(str(f), download=False)
    # with the package's copy there, the way out is to use it (not to install what is installed)
    monkeypatch.setattr(data, "DEBIAN_DIR", Path(tiny_data))
    with pytest.raises(data.DataError, match=rf"data.root='.*file.txt' is not a directory; leave data.root unset to use the copy in {tiny_data}$"):
        data.load(str(f), download=False)


def test_root_without_the_files(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-package")
    with pytest.raises(data.DataError, match=r"lacks train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        data.load(str(empty), download=False)
    # with the Debian package's files present, the way out is to use them, not to install it again
    monkeypatch.setattr(data, "DEBIAN_DIR", write_idx(tmp_path / "package"))
    with pytest.raises(data.DataError, match=rf"lacks .*; leave data.root unset to use the copy in {tmp_path / 'package'}"):
        data.load(str(empty), download=False)


def test_a_failed_download_says_what_was_tried_and_leaves_no_folders(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, train, download):
        (Path(root) / "FashionMNIST" / "raw").mkdir(parents=True, exist_ok=True)
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(data.DataError, match=r"data.root='.*' lacks .*, and the download into it failed \(Name or service"):
        data.load(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_truncated_raw_file(tmp_path):
    root = write_idx(tmp_path / "d", n_train=50, n_test=20)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.DataError, match=r"train-images-idx3-ubyte is truncated or corrupt: 39116 bytes, expected 39216"):
        data.load(str(root), download=False)


def test_truncated_gzip_file(tmp_path):
    root = write_idx(tmp_path / "d", n_train=50, n_test=20, gz=True)
    path = root / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(data.DataError, match=r"t10k-labels-idx1-ubyte.gz is truncated or corrupt"):
        data.load(str(root), download=False)


def test_not_an_idx_file(tmp_path):
    root = write_idx(tmp_path / "d", n_train=50, n_test=20)
    (root / "train-labels-idx1-ubyte").write_bytes(b"<html>not found</html>")
    with pytest.raises(data.DataError, match="not a Fashion-MNIST IDX file"):
        data.load(str(root), download=False)


def test_nothing_found_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", data.Path("/nonexistent/fashion-mnist"))
    with pytest.raises(data.DataError, match=r"Fashion-MNIST not found.*apt-get install dataset-fashion-mnist.*data.root=FOLDER"):
        data.load(None, download=False)


def test_gzip_cache_is_refreshed_when_the_source_changes(tmp_path):
    root = write_idx(tmp_path / "d", n_train=50, n_test=20, gz=True, seed=0)
    first, _ = data.load(str(root), download=False)
    write_idx(tmp_path / "d", n_train=40, n_test=20, gz=True, seed=1)
    second, _ = data.load(str(root), download=False)
    assert len(first) == 50 and len(second) == 40


def split(n=50):
    """Images whose every pixel holds the sample's index, so batches can be traced."""
    return data.Split(torch.arange(n, dtype=torch.uint8)[:, None, None].expand(n, 28, 28).contiguous(), torch.arange(n))


def test_shuffled_epoch_visits_every_sample_once():
    loader = data.DeviceLoader(split(50), batch_size=16, shuffle=True, seed=3)
    assert len(loader) == 4 and loader.num_samples == 50
    first = torch.cat([y for _, y in loader])
    second = torch.cat([y for _, y in loader])
    assert sorted(first.tolist()) == list(range(50)) == sorted(second.tolist())
    assert first.tolist() != second.tolist()  # a new order each epoch
    again = torch.cat([y for _, y in data.DeviceLoader(split(50), batch_size=16, shuffle=True, seed=3)])
    assert again.tolist() == first.tolist()  # the same seed gives the same order


def test_batches_pair_images_with_their_labels():
    for x, y in data.DeviceLoader(split(50), batch_size=16, shuffle=True):
        assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), y)


def test_drop_last_and_limit():
    assert len(data.DeviceLoader(split(50), batch_size=16, drop_last=True)) == 3
    loader = data.DeviceLoader(split(50), batch_size=16, limit_batches=2)
    assert len(loader) == 2 and loader.num_samples == 32 and len(list(loader)) == 2


def test_resize_matches_torchvision_rounded_as_the_books_uint8_images():
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    loader = data.DeviceLoader(data.Split(images, torch.zeros(4, dtype=torch.long)), batch_size=4, size=(96, 64))
    x, _ = next(iter(loader))
    assert x.shape == (4, 1, 96, 64) and x.dtype == torch.float32
    expected = TF.resize(images[:, None].float(), [96, 64], antialias=True)
    assert (x * 255 - expected).abs().max() <= 0.5 + 1e-4  # whole levels: rounded, as PIL resizes uint8 images
    assert torch.equal(x * 255, (x * 255).round())


def test_resizing_once_or_batch_by_batch_gives_the_same_pixels():
    images = torch.randint(0, 256, (40, 28, 28), dtype=torch.uint8)
    once = data.resize_split(data.Split(images, torch.arange(40)), (96, 64), chunk=16)  # chunks of 16, 16, 8
    assert once.images.shape == (40, 96, 64) and once.images.dtype == torch.uint8
    # the loader hands such a split out as it is (no second resize) ...
    x, y = next(iter(data.DeviceLoader(once, batch_size=40, size=(96, 64))))
    assert torch.equal(x[:, 0], once.images.float() / 255) and torch.equal(y, torch.arange(40))
    # ... and a loader resizing each batch (of another size than the chunks) gives the same numbers
    per_batch = torch.cat([x for x, _ in data.DeviceLoader(data.Split(images, torch.arange(40)), batch_size=6, size=(96, 64))])
    assert torch.equal(per_batch, x)


@pytest.mark.parametrize("overrides, free, expect_once", [
    ([], 10**12, (True, True)),  # no augmentation and room: both resized once
    (["data.hflip=true"], 10**12, (False, True)),  # augmentation acts on 28 px: the training images per batch
    ([], 10**5, (False, False)),  # no room for the resized images: per batch
    ([], 50 * 64 * 64 * 4, (True, False)),  # room for the training images only
    (["trainer.limit_train_batches=1"], 10**12, (False, True)),  # reads 16 of 50 training images: per batch
    (["trainer.limit_train_batches=1", "trainer.max_epochs=4"], 10**12, (True, True)),  # 64 of 50: once
    (["trainer.limit_test_batches=1", "data.test_batch_size=4"], 10**12, (True, False)),  # 4 of 20 test images
])
def test_build_loaders_resizes_once_when_it_pays_and_fits(make_cfg, monkeypatch, caplog, overrides, free, expect_once):
    monkeypatch.setattr(data, "free_memory", lambda device: free)
    cfg = make_cfg("model=resnet18", "data.resize=64", "trainer.max_epochs=1", "data.batch_size=16", *overrides)
    with caplog.at_level("INFO", logger="cnnbench"):
        loaders = data.build_loaders(cfg, split(50), split(20), (64, 64), torch.device("cpu"))
    for loader, once, name in zip(loaders, expect_once, ("training images", "test images")):
        assert tuple(loader.split.images.shape[1:]) == ((64, 64) if once else (28, 28))
        assert next(iter(loader))[0].shape[-2:] == (64, 64)  # the model sees 64 px either way
        assert (f"{name}:" in caplog.text) == (not once)  # the log says why a split is resized batch by batch


def test_evaluation_resizes_only_the_test_images(make_cfg, caplog):
    cfg = make_cfg("model=resnet18", "data.resize=64")
    with caplog.at_level("INFO", logger="cnnbench"):
        train_loader, test_loader = data.build_loaders(cfg, split(50), split(20), (64, 64), torch.device("cpu"), passes=(0, 1))
    assert tuple(train_loader.split.images.shape[1:]) == (28, 28) and tuple(test_loader.split.images.shape[1:]) == (64, 64)
    assert "resizing" not in caplog.text


def test_the_dataset_is_read_once_per_process(tmp_path, monkeypatch):
    root = write_idx(tmp_path / "d", gz=True)
    data._read.cache_clear()
    first = data.load(str(root))
    assert data.load(str(root))[0] is first[0]  # the second job of a sweep reuses it
    assert data._read.cache_info().hits == 1


def test_normalize():
    loader = data.DeviceLoader(split(50), batch_size=50, mean=0.1, std=0.5)
    x, y = next(iter(loader))
    torch.testing.assert_close(x[:, 0, 0, 0], (y / 255 - 0.1) / 0.5)


def test_augmentation_keeps_shape_and_content():
    images = torch.zeros(64, 28, 28, dtype=torch.uint8)
    images[:, :, :14] = 255  # left half bright
    loader = data.DeviceLoader(data.Split(images, torch.zeros(64, dtype=torch.long)), 64, hflip=True, crop_padding=3, seed=1)
    x, _ = next(iter(loader))
    assert x.shape == (64, 1, 28, 28)
    left_bright = x[:, 0, 14, :4].mean(dim=1) > 0.5
    right_bright = x[:, 0, 14, -4:].mean(dim=1) > 0.5
    assert left_bright.any() and right_bright.any()  # some images were flipped, some not
    # a crop shifts by at most 3 px, so the bright area keeps 14 columns minus the shift
    assert ((x[:, 0, 14] > 0.5).sum(dim=1) >= 11).all()


def test_a_loader_state_from_another_kind_of_device_resumes_the_order_and_says_so(caplog):
    """A checkpoint written on a GPU holds a CUDA generator's 16-byte augmentation state, which a
    CPU generator refuses: the order resumes exactly, the augmentation draws start afresh, with a warning."""
    split = data.Split(torch.randint(0, 255, (40, 28, 28), dtype=torch.uint8), torch.arange(40) % 10)
    saved = data.DeviceLoader(split, 8, shuffle=True, seed=5, hflip=True)
    next(iter(saved))
    state = saved.state_dict(batches_done=1) | {"aug_rng": torch.zeros(16, dtype=torch.uint8)}  # as CUDA's would be
    resumed = data.DeviceLoader(split, 8, shuffle=True, seed=5, hflip=True)
    resumed.load_state_dict(state)
    assert "written on another kind of device" in caplog.text
    rest = list(resumed)
    uninterrupted = list(data.DeviceLoader(split, 8, shuffle=True, seed=5, hflip=True))[1:]
    assert len(rest) == 4 and torch.equal(torch.cat([y for _, y in rest]), torch.cat([y for _, y in uninterrupted]))


def test_processes_preparing_the_cache_at_once_all_succeed(tmp_path, monkeypatch):
    """torchrun's ranks prepare a new data root's cache at the same moment: none may fail."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("CNNBENCH_CACHE", str(tmp_path / "cache"))
    root = write_idx(tmp_path / "raw")  # raw files: the cache links them
    with ThreadPoolExecutor(8) as pool:
        roots = list(pool.map(lambda _: data.locate(str(root), download=False), range(16)))
    assert len(set(roots)) == 1 and len(data.load(str(root), download=False)[0]) == 96
