"""Fashion-MNIST: finding the files, loading them once onto the device, and the batch iterator.

The whole dataset is 70k uint8 images of 28x28 (55 MB), so it lives on the device and each
batch is sliced from it, then converted, augmented and resized there. Nothing runs per
sample in Python; this is cnnbench's main speed lever over a DataLoader that resizes one
PIL image at a time.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import os
import shutil
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import distributed
from .metrics import NoSpace, atomic_write

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {  # file name -> IDX magic number
    "train-images-idx3-ubyte": 2051,
    "train-labels-idx1-ubyte": 2049,
    "t10k-images-idx3-ubyte": 2051,
    "t10k-labels-idx1-ubyte": 2049,
}
CLASSES = (  # Fashion-MNIST's labels 0-9, as the dataset's README (and torchvision) names them
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
HOW_TO_GET = (
    "install the Debian package (apt-get install dataset-fashion-mnist, files in "
    f"{DEBIAN_DIR}), or download the four files train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz from "
    "https://github.com/zalandoresearch/fashion-mnist into a folder and pass data.root=FOLDER."
)


class DataError(ValueError):
    """The dataset cannot be found or read; the message says what to do."""


def cache_dir() -> Path:
    """Where decompressed copies live: $CNNBENCH_CACHE, else ~/.cache/cnnbench."""
    env = os.environ.get("CNNBENCH_CACHE")
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cnnbench"


def _find(folder: Path, name: str) -> Path | None:
    """The raw or gzipped file ``name`` in ``folder`` or in torchvision's layout below it; a
    folder or a broken link in its place is an error that says so."""
    for sub in (folder, folder / "FashionMNIST" / "raw"):
        for candidate in (sub / name, sub / f"{name}.gz"):
            if candidate.is_symlink() and not candidate.exists():
                raise DataError(f"{candidate} is a broken symbolic link (to {os.readlink(candidate)}); {HOW_TO_GET}")
            if candidate.is_dir():
                raise DataError(f"{candidate} is a directory where the data file {candidate.name} should be; {HOW_TO_GET}")
            if candidate.is_file():
                return candidate
    return None


def _check_idx(path: Path, magic: int) -> int:
    """Validate an uncompressed IDX file's header against its size (and images against 28x28);
    return the item count."""
    size = path.stat().st_size
    ndim = magic & 0xFF
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim or struct.unpack(">i", header[:4])[0] != magic:
        raise DataError(f"{path} is not a Fashion-MNIST IDX file (bad header); {HOW_TO_GET}")
    dims = struct.unpack(f">{ndim}i", header[4:])
    if ndim == 3 and tuple(dims[1:]) != (28, 28):
        raise DataError(f"{path} holds {dims[1]}x{dims[2]} images; Fashion-MNIST's are 28x28; {HOW_TO_GET}")
    expected = len(header) + int(torch.Size(dims).numel())
    if size != expected:
        raise DataError(f"{path} is truncated or corrupt: {size} bytes, expected {expected}; {HOW_TO_GET}")
    return dims[0]


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _decompressed(src: Path, dst: Path) -> None:
    """``dst``, the decompressed copy of ``src``, made or checked. The cache is keyed on the
    source's content: ``dst.json`` records the source's size and hash and the copy's, both are
    verified on every use, and a copy that fails its check (or whose source changed, whatever its
    modification time) is made again."""
    stamp_path = dst.with_name(dst.name + ".json")
    source = {"source_size": src.stat().st_size, "source_sha1": _sha1(src)}
    try:
        stamp = json.loads(stamp_path.read_text())
        if stamp | source == stamp and dst.stat().st_size == stamp["size"] and _sha1(dst) == stamp["sha1"]:
            return
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest, size = hashlib.sha1(), 0

    def decompress(out) -> None:
        nonlocal size
        with gzip.open(src, "rb") as fin:
            while True:
                try:
                    chunk = fin.read(1 << 20)
                except (OSError, EOFError, zlib.error) as err:
                    raise DataError(f"{src} is truncated or corrupt ({err}); {HOW_TO_GET}") from None
                if not chunk:
                    return
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)

    try:
        atomic_write(dst, decompress, binary=True)  # a concurrent run sees the old copy or the whole new one
        atomic_write(stamp_path, lambda f: f.write(json.dumps(source | {"size": size, "sha1": digest.hexdigest()})))
    except NoSpace:
        raise DataError(f"no space left on the device to write the dataset cache {dst}; free some, or set "
                        f"CNNBENCH_CACHE to a folder with room (about 60 MB)") from None
    except OSError as err:
        raise DataError(f"cannot write the dataset cache {dst} ({err.strerror or err}); set CNNBENCH_CACHE "
                        "to a writable folder") from None


def _prepare(source: Path) -> Path:
    """Make a torchvision-readable root (<root>/FashionMNIST/raw/*-ubyte) from the four files
    in ``source``: gzipped files are decompressed into the verified cache, raw ones linked."""
    found = {name: _find(source, name) for name in FILES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise FileNotFoundError(", ".join(missing))
    key = hashlib.sha1(str(source.resolve()).encode()).hexdigest()[:12]
    root = cache_dir() / "fashion-mnist" / key
    raw = root / "FashionMNIST" / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the dataset cache {raw} ({err.strerror or err}); set CNNBENCH_CACHE "
                        "to a writable folder") from None
    for name, src in found.items():
        dst = raw / name
        if src.suffix == ".gz":
            _decompressed(src, dst)
        elif not (dst.is_symlink() and dst.resolve() == src.resolve()):
            # made aside and renamed into place: processes preparing the cache at once (torchrun's
            # ranks) each succeed, where unlink-then-link let the second one fail
            aside = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}")
            aside.unlink(missing_ok=True)
            aside.symlink_to(src.resolve())
            os.replace(aside, dst)
    counts = {name: _check_idx(raw / name, magic) for name, magic in FILES.items()}
    for split in ("train", "t10k"):
        if counts[f"{split}-images-idx3-ubyte"] != counts[f"{split}-labels-idx1-ubyte"]:
            raise DataError(f"{source}: {split} images and labels differ in count; {HOW_TO_GET}")
    return root


def check_root(root: str) -> Path:
    """``data.root`` as a folder (checked before a run makes its dir, and again here)."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"data.root={root!r} is not a directory; {way_out(None)}")
    return folder


def way_out(root: str | None) -> str:
    """What to do when data.root lacks the data: the Debian package's copy first, when it is there."""
    if not _has_files(DEBIAN_DIR):
        return HOW_TO_GET
    return f"leave data.root unset to use the copy in {DEBIAN_DIR}" + (f", or put the four files in {root}" if root else "")


def locate(root: str | None, download: bool = True) -> Path:
    """Find Fashion-MNIST: ``root`` if given, else the Debian package, else torchvision's
    download (into ``root`` or the cache). Returns a root cnnbench's reader (and torchvision's) accepts."""
    if root is not None:
        folder = check_root(root)
        try:
            return _prepare(folder)
        except FileNotFoundError as missing:
            if not download:
                raise DataError(f"data.root={root!r} lacks {missing}; {way_out(root)}") from None
            return _download(folder, f"data.root={root!r} lacks {missing}, and the download into it failed", way_out(root))
    if DEBIAN_DIR.is_dir():
        try:
            return _prepare(DEBIAN_DIR)
        except FileNotFoundError as missing:
            log.warning("%s lacks %s; trying elsewhere", DEBIAN_DIR, missing)
    if not download:
        raise DataError(f"Fashion-MNIST not found (data.root is unset, {DEBIAN_DIR} is missing, data.download=false). {HOW_TO_GET}")
    return _download(cache_dir() / "fashion-mnist" / "download")


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and all(_find(folder, name) for name in FILES)


def _download(folder: Path, failed: str | None = None, way_out: str = HOW_TO_GET) -> Path:
    """torchvision's download into ``folder``; on failure a DataError (``failed`` says what
    was tried) and no empty FashionMNIST/raw folders left behind."""
    from torchvision.datasets import FashionMNIST

    made = folder / "FashionMNIST"
    fresh = not made.exists()
    try:
        FashionMNIST(str(folder), train=True, download=True)
        FashionMNIST(str(folder), train=False, download=True)
    except Exception as err:  # network errors come in many types
        if fresh:
            shutil.rmtree(made, ignore_errors=True)  # torchvision's folders, with at most a partial file
        failed = failed or f"Fashion-MNIST not found and the download into {folder} failed"
        raise DataError(f"{failed} ({err}); {way_out}") from None
    return folder


@dataclass
class Split:
    images: torch.Tensor  # uint8 [N, 28, 28]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


def load(root: str | None = None, download: bool = True) -> tuple[Split, Split]:
    """Train and test splits as uint8 tensors on the CPU (the caller moves them once). Read from
    disk once per process: the jobs of a sweep share them (callers must not modify them)."""
    path = locate(root, download)
    raw = path / "FashionMNIST" / "raw"
    stamp = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(raw.glob("*-ubyte")))
    return _read(str(path), stamp)


def _read_idx(path: Path, magic: int) -> torch.Tensor:
    """An IDX file as a uint8 tensor of its shape, its header and size checked first."""
    _check_idx(path, magic)
    buffer = bytearray(path.stat().st_size)
    with open(path, "rb") as f:
        f.readinto(buffer)
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}i", buffer[4:4 + 4 * ndim])
    return torch.frombuffer(buffer, dtype=torch.uint8, offset=4 + 4 * ndim).view(dims)


@functools.lru_cache(maxsize=2)
def _read(path: str, stamp: tuple) -> tuple[Split, Split]:
    """Both splits, read with cnnbench's own IDX reader (torchvision's import alone cost every run 0.3 s)."""
    raw = Path(path) / "FashionMNIST" / "raw"
    splits = []
    for split in ("train", "t10k"):
        images = _read_idx(raw / f"{split}-images-idx3-ubyte", FILES[f"{split}-images-idx3-ubyte"])
        labels = _read_idx(raw / f"{split}-labels-idx1-ubyte", FILES[f"{split}-labels-idx1-ubyte"]).long()
        if len(images) != len(labels):
            raise DataError(f"{raw}: {split} images and labels differ in count; {HOW_TO_GET}")
        bad = (labels >= len(CLASSES)).nonzero()  # uint8 labels cannot be negative
        if len(bad):
            raise DataError(f"{raw / f'{split}-labels-idx1-ubyte'} holds {len(bad)} labels outside 0..9 (the first, "
                            f"at index {bad[0].item()}, is {labels[bad[0]].item()}); {HOW_TO_GET}")
        splits.append(Split(images, labels))
    return splits[0], splits[1]


class DeviceLoader:
    """Batches of a device-resident split: shuffled by a seeded permutation, converted to
    float in [0, 1], augmented at the native 28 px, then resized on the device.

    Augmentation (training only): ``crop_padding`` pads each image by that many pixels
    and crops a random 28x28 window back (zero padding); ``hflip`` flips half the
    images left-right. Both act on whole batches with per-image random draws.

    Under torchrun every rank draws the same order and takes its ``rank``-th share of each
    batch of ``batch_size`` (the global batch), so the ranks together see what one process would.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        size: tuple[int, int] = (28, 28),
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        mean: float | None = None,
        std: float | None = None,
        crop_padding: int = 0,
        hflip: bool = False,
        limit_batches: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.split, self.batch_size, self.size = split, batch_size, tuple(size)
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.mean, self.std = mean, std
        self.crop_padding, self.hflip = crop_padding, hflip
        self.limit_batches = limit_batches
        device = split.images.device
        # The order comes from a CPU generator, so it is the same on every device.
        self.order_rng = torch.Generator().manual_seed(seed)
        self.aug_rng = torch.Generator(device).manual_seed(seed + 1)
        self._epoch_start = self.order_rng.get_state()  # order state the current epoch began with
        self._in_epoch = False
        self._skip = 0  # batches to skip at the next epoch's start (resuming mid-epoch)

    def state_dict(self, batches_done: int = 0) -> dict:
        """Where the loader stands, for an exact resume: the order state of the epoch under
        way (or of the next one), how many of its batches are done, the augmentation state."""
        mid_epoch = self._in_epoch and batches_done > 0
        return {
            "order_rng": self._epoch_start if mid_epoch else self.order_rng.get_state(),
            "batches_done": batches_done if mid_epoch else 0,
            "aug_rng": self.aug_rng.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.order_rng.set_state(state["order_rng"])
        try:
            self.aug_rng.set_state(state["aug_rng"])
        except RuntimeError:  # saved on another kind of device: a CUDA generator's state is not a CPU one's
            if self.crop_padding or self.hflip:
                log.warning("the checkpoint was written on another kind of device: its augmentation draws cannot "
                            "continue here, so they start afresh from the seed (the resume is not exact)")
        self._skip = state["batches_done"]

    def __len__(self) -> int:
        n = len(self.split)
        steps = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        return min(steps, self.limit_batches) if self.limit_batches else steps

    @property
    def step_batch(self) -> int:
        """Images in each of this rank's full steps (an epoch's last step may have fewer)."""
        n = min(self.batch_size, len(self.split))
        return n // self.world_size + (self.rank < n % self.world_size)  # tensor_split's larger shares come first

    @property
    def num_samples(self) -> int:
        """Images one pass yields."""
        return min(len(self.split), len(self) * self.batch_size)

    def __iter__(self):
        images, labels = self.split.images, self.split.labels
        self._epoch_start, self._in_epoch = self.order_rng.get_state(), True
        order = torch.randperm(len(labels), generator=self.order_rng).to(images.device) if self.shuffle else None
        if order is None and self.world_size > 1:  # a rank's share of a batch needs its indices
            order = torch.arange(len(labels), device=images.device)
        first, self._skip = self._skip, 0
        for step in range(first, len(self)):
            window = slice(step * self.batch_size, (step + 1) * self.batch_size)
            idx = order[window] if order is not None else window
            if self.world_size > 1:
                idx = idx.tensor_split(self.world_size)[self.rank]
            yield self.transform(images[idx]), labels[idx]
        self._in_epoch = False

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images [B, H, W] (native, or resized once) -> float [B, 1, h, w] in [0, 1]. A
        resize here gives the pixels ``resize_split`` would have: rounded to whole levels, as the
        book's per-image resize of uint8 images is; whether a split was resized once or is
        resized batch by batch changes the speed, never the numbers."""
        x = x.unsqueeze(1).float()
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, self.aug_rng)
        if self.hflip:
            flip = torch.rand(len(x), device=x.device, generator=self.aug_rng) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if x.shape[-2:] != self.size:
            # Bilinear with antialias, as torchvision's Resize does on tensors.
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True, align_corners=False).round_().clamp_(0, 255)
        x = x.div_(255)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


def resize_split(split: Split, size: tuple[int, int], chunk: int = 2048) -> Split:
    """The split's images resized once to ``size``, kept as uint8 (rounded, as the book's
    per-image PIL resize quantises too), chunk by chunk on the split's device."""
    images = torch.empty((len(split), *size), dtype=torch.uint8, device=split.images.device)
    for i in range(0, len(split), chunk):
        x = split.images[i : i + chunk].unsqueeze(1).float()
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        images[i : i + chunk] = x.squeeze(1).round_().clamp_(0, 255).to(torch.uint8)
    return Split(images, split.labels)


def held_on(device: torch.device, *loaders) -> int:
    """Bytes the loaders' images and labels take on ``device``'s kind of memory, each storage once
    (a subset is a view of its split): on a GPU, the dataset's share of CUDA's peak allocation."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for loader in loaders for t in (loader.split.images, loader.split.labels) if t.device.type == device.type}
    return sum(storages.values())


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` (CUDA: the driver's count; CPU: the kernel's MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0


def resize_up_front(loaders: dict[str, tuple[DeviceLoader, int]], device: torch.device) -> list[str]:
    """Resize a loader's split once, up front (uint8, on the device), when the run reads at least
    as many of its images as it holds (``passes`` over the loader) and the resized images fit in
    what is left of a quarter of the device's free memory (at 224 px the 70,000 images take 3.5 GB,
    at 96 px 0.65 GB). Otherwise each batch is resized as it is read, to the same pixels: a smoke
    run reads 80 images, and resizing all 70,000 to 96 px cost it 6 s on 2 CPU cores. Returns why
    each split (by its name in ``loaders``) that is not resized once is not."""
    budget, why = free_memory(device) // 4, []
    for name, (loader, passes) in loaders.items():
        split, (h, w) = loader.split, loader.size
        if tuple(split.images.shape[-2:]) == (h, w) or not len(split) or not passes:
            continue  # at its size already, empty, or not read (task=evaluate's training images)
        need = len(split) * h * w
        if passes * loader.num_samples < len(split):
            times = f" ({passes} passes of {loader.num_samples:,})" if passes > 1 else ""
            why.append(f"{name}: the run reads {passes * loader.num_samples:,} of its {len(split):,} images{times}")
        elif need > budget:
            why.append(f"{name}: {need / 2**20:,.1f} MiB resized would not fit in a quarter of the free memory")
        else:
            loader.split, budget = resize_split(split, (h, w)), budget - need
    return why


def build_loaders(cfg, train: Split, test: Split, size: tuple[int, int], device: torch.device,
                  passes: tuple[int, int] | None = None):
    """The training and test loaders for a run's config (data.*, trainer.limit_*, seed).
    ``passes``: how often the run reads each (training, evaluation), max_epochs each by default.

    Without augmentation a split is resized once per run, on the device, when that pays and fits
    (``resize_up_front``); with crop/flip augmentation, which acts on the native 28 px images, each
    batch is resized after augmenting it."""
    for key, n, held in (("data.subset", cfg.data.subset, len(train)), ("data.test_subset", cfg.data.test_subset, len(test))):
        if n and n > held:
            log.warning("%s=%d is more than the %d images there are: all are used", key, n, held)
    if cfg.data.subset:
        train = Split(train.images[: cfg.data.subset], train.labels[: cfg.data.subset])
    train_passes, test_passes = passes or (cfg.trainer.max_epochs, cfg.trainer.max_epochs)
    if train_passes and cfg.data.drop_last and len(train) < cfg.data.batch_size:
        source = f"data.subset={cfg.data.subset}" if cfg.data.subset else f"the data in {cfg.data.root or 'data.root'}"
        raise DataError(f"data.drop_last=true leaves no training batch: data.batch_size={cfg.data.batch_size} is more than the "
                        f"{len(train):,} training images ({source}); lower data.batch_size, or set data.drop_last=false")
    if cfg.data.test_subset:
        test = Split(test.images[: cfg.data.test_subset], test.labels[: cfg.data.test_subset])
    mean = std = None
    if cfg.data.normalize:
        pixels = train.images.float().div_(255)
        mean, std = pixels.mean().item(), pixels.std().item()
    train, test = train.to(device), test.to(device)
    world = distributed.from_env()
    common = dict(size=size, mean=mean, std=std, rank=world.rank, world_size=world.size)
    train_loader = DeviceLoader(
        train, cfg.data.batch_size, shuffle=True, drop_last=cfg.data.drop_last, seed=cfg.seed,
        crop_padding=cfg.data.crop_padding, hflip=cfg.data.hflip, limit_batches=cfg.trainer.limit_train_batches,
        **common,
    )
    test_loader = DeviceLoader(
        test, cfg.data.test_batch_size, limit_batches=cfg.trainer.limit_test_batches, **common
    )
    augmented = cfg.data.crop_padding or cfg.data.hflip
    loaders = {"test images": (test_loader, test_passes)}
    if not augmented:
        loaders = {"training images": (train_loader, train_passes)} | loaders
    reasons = ["training images: augmentation acts on 28 px"] if augmented and tuple(size) != (28, 28) else []
    reasons += resize_up_front(loaders, device)
    if reasons:
        log.info("resizing batch by batch to %dx%d (%s)", *size, "; ".join(reasons))
    return train_loader, test_loader


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and take a random window of the original size per image."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, b, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # [B, H, 1]
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # [B, 1, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
