"""Reading a recipe's `data.source`, before any cleaning or splitting.

    raw = read_source("sklearn:digits")             # RawImages: uint8 [N,1,8,8], labels, classes
    raw = read_source("data/churn.csv", data)       # RawTable: a pyarrow Table, cleaned later
    raw = read_source("data/churn.csv", data, scratch)   # the same, streamed to an Arrow file and memory-mapped
    raw = read_source("torchvision:mnist:~/datasets", data)   # the dataset's own train/test kept

Sources: `.csv`/`.parquet`/`.jsonl` tables (text tables too), an image folder (one sub-folder
per class, or train/ and test/ (and val/) folders of class folders: a predefined split),
`torchvision:mnist|cifar10:ROOT` read from local files with torchvision's own dataset
classes (never downloading), and `sklearn:digits|breast_cancer|wine|iris|diabetes`.
With a `Scratch` folder, table files (of MAP_BYTES and more) are memory-mapped and image
folders decoded into a file-backed array, so that reading a large source does not fill
private memory.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.data.arrays import Scratch
from bigmodel_cli.data.tables import TABLE_SUFFIXES, map_table, read_table
from bigmodel_cli.errors import UsageError

SKLEARN_DATASETS = ("digits", "breast_cancer", "wine", "iris", "diabetes")
TORCHVISION_DATASETS = ("mnist", "cifar10")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")
MAP_BYTES = 1 << 23  # table files from this size on are streamed and memory-mapped; smaller ones read whole


@dataclass
class RawTable:
    """A table as read; `classes` names the target's values when it holds class indices (sklearn)."""

    table: Any  # pyarrow.Table
    sha256: str
    path: Path | None = None
    classes: list[str] | None = None
    default_target: str | None = None


@dataclass
class RawImages:
    x: np.ndarray  # uint8 [N, C, H, W]
    y: np.ndarray  # int64 class index
    classes: list[str]
    sha256: str
    target: str = "label"
    predefined: dict[str, np.ndarray] | None = None  # the dataset's own split: split -> row indices
    predefined_by: str = "the dataset's own"  # who made the predefined split, for the report
    bad_files: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_source(source: str | None, data=None, scratch: Scratch | None = None) -> RawTable | RawImages:
    """`data` is the recipe's DataSection (CSV options, image size, bad-file policy); defaults when None.

    With `scratch`, table files are streamed into a memory-mapped Arrow file and image folders
    decoded into a file-backed array there (prepare-data); without, they are read into memory.
    """
    if data is None:
        from bigmodel_cli.config.schema import DataSection

        data = DataSection()
    if not source:
        raise UsageError("data.source is not set; give --source or set data.source in the recipe")
    scheme, _, rest = source.partition(":")
    if scheme == "sklearn" and rest:
        return _sklearn(rest)
    if scheme == "torchvision" and rest:
        return _torchvision(source, rest)
    if "://" in source:
        raise UsageError(f"data.source '{source}': unsupported source; use a local file or folder, "
                         f"torchvision:mnist|cifar10:ROOT or sklearn:{{{'|'.join(SKLEARN_DATASETS)}}}")
    path = Path(source).expanduser()
    if path.is_dir():
        return _image_folder(path, data, scratch)
    if path.suffix.lower() in TABLE_SUFFIXES or path.exists():
        return _table_file(path, data, scratch)
    raise UsageError(f"data.source '{source}': no such file or folder")


def _table_file(path: Path, data, scratch: Scratch | None) -> RawTable:
    """Read the table while another thread hashes the same file (hashlib releases the GIL)."""
    if not path.is_file():
        read_table(path)  # raises the right one-line error
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(file_sha256, path)
        if scratch is None or path.stat().st_size < MAP_BYTES:
            table = read_table(path, data.delimiter, data.encoding)
        else:
            table = map_table(path, scratch.path, data.delimiter, data.encoding)
        return RawTable(table=table, sha256=digest.result(), path=path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def _sha256_files(root: Path, files: list[Path]) -> str:
    """One digest for a set of files: their paths relative to `root` and their own SHA-256, in order."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _sklearn(name: str) -> RawTable | RawImages:
    import pyarrow as pa
    import sklearn.datasets as skd

    if name not in SKLEARN_DATASETS:
        near = difflib.get_close_matches(name, SKLEARN_DATASETS, n=1)
        hint = f"; did you mean 'sklearn:{near[0]}'?" if near else f"; available: {', '.join(SKLEARN_DATASETS)}"
        raise UsageError(f"data.source 'sklearn:{name}': unknown scikit-learn dataset{hint}")
    bunch = getattr(skd, f"load_{name}")()
    sha = _sha256_arrays(bunch.data, bunch.target)
    if name == "digits":
        # 8x8 grey images with values 0..16: stored as uint8 pixels 0..255 like any image
        pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
        return RawImages(x=pixels, y=bunch.target.astype(np.int64), classes=[str(c) for c in bunch.target_names],
                         sha256=sha, target="digit")
    columns = {str(f): pa.array(bunch.data[:, j].astype(np.float32)) for j, f in enumerate(bunch.feature_names)}
    if name == "diabetes":
        columns["progression"] = pa.array(bunch.target.astype(np.float32))
        return RawTable(table=pa.table(columns), sha256=sha, default_target="progression")
    columns["target"] = pa.array(bunch.target.astype(np.int64))
    return RawTable(table=pa.table(columns), sha256=sha, classes=[str(c) for c in bunch.target_names],
                    default_target="target")


def _image_folder(root: Path, data, scratch: Scratch | None) -> RawImages:
    from bigmodel_cli.data import images

    splits = images.split_folders(root)
    if splits:
        files, labels, classes, predefined = images.list_split_folders(splits)
        folders = list(splits.values())
    else:
        (files, labels, classes), predefined, folders = images.list_folder(root), None, [root]
    size = data.image.size
    common, channels = images.probe(files)
    channels = data.image.channels or channels
    if size is None and common is None:
        raise UsageError(f"{root}: images have different sizes; set data.image.size (e.g. --set data.image.size=64)")
    digest = hashlib.sha256()

    def add_file(i: int, own: str) -> None:  # the folder's digest: every file's path and SHA-256, in order
        digest.update(f"{files[i].relative_to(root).as_posix()}\0{own}\n".encode())

    x, ok, bad = images.decode_files(files, size or common, channels, data.on_bad_file,
                                     new_array=scratch.array if scratch else None, on_digest=add_file)
    notes = [f"empty class folder '{name}' ignored" for folder in folders
             for name in images.empty_class_folders(folder, classes)]
    if bad:
        notes.append(f"{len(bad)} unreadable image(s) skipped (listed in report.bad_files)")
    if predefined is not None:  # rows of the readable files only
        position = np.cumsum(ok) - 1
        predefined = {s: position[rows[ok[rows]]] for s, rows in predefined.items()}
    return RawImages(x=x, y=labels[ok], classes=classes, sha256=digest.hexdigest(), bad_files=bad,
                     predefined=predefined, notes=notes, predefined_by="the folder's own")


def _torchvision(source: str, rest: str) -> RawImages:
    name, _, root = rest.partition(":")
    if name not in TORCHVISION_DATASETS:
        near = difflib.get_close_matches(name, TORCHVISION_DATASETS, n=1)
        hint = f"; did you mean 'torchvision:{near[0]}:ROOT'?" if near else ""
        raise UsageError(f"data.source '{source}': unknown torchvision dataset '{name}'{hint} "
                         f"(available: {', '.join(TORCHVISION_DATASETS)})")
    if not root:
        raise UsageError(f"data.source '{source}': give the folder, torchvision:{name}:ROOT")
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise UsageError(f"data.source '{source}': no such folder {root_path}")
    return _mnist(root_path) if name == "mnist" else _cifar10(root_path)


def _mnist(root: Path) -> RawImages:
    """torchvision.datasets.MNIST on ROOT/MNIST/raw; gzipped idx files are unpacked to a temporary copy first."""
    raw = root / "MNIST" / "raw"
    found: list[Path] = []
    for name in MNIST_FILES:
        plain, packed = raw / name, raw / f"{name}.gz"
        if not plain.is_file() and not packed.is_file():
            raise UsageError(f"torchvision:mnist: missing {plain} (or {packed.name}); MNIST's four idx files "
                             f"belong in {raw}")
        found.append(plain if plain.is_file() else packed)
    with tempfile.TemporaryDirectory(prefix="bigmodel-mnist-") as tmp:
        tmp_raw = Path(tmp) / "MNIST" / "raw"
        tmp_raw.mkdir(parents=True)
        for path in found:
            dest = tmp_raw / path.name.removesuffix(".gz")
            try:
                with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
            except (OSError, EOFError) as e:
                raise UsageError(f"{path}: not a readable MNIST idx file ({e})") from None
        splits = {split: _load_torchvision_split("MNIST", tmp, split == "train", found) for split in ("train", "test")}
    classes = [c.split(" - ")[0] for c in splits["train"][2]]
    return _predefined(splits, classes, _sha256_files(root, found))


def _cifar10(root: Path) -> RawImages:
    folder = root / "cifar-10-batches-py"
    found = [folder / name for name in CIFAR10_FILES]
    for path in found:
        if not path.is_file():
            raise UsageError(f"torchvision:cifar10: missing {path}; the python-version batches of CIFAR-10 "
                             f"belong in {folder}")
    splits = {split: _load_torchvision_split("CIFAR10", str(root), split == "train", found)
              for split in ("train", "test")}
    return _predefined(splits, list(splits["train"][2]), _sha256_files(root, found))


def _load_torchvision_split(kind: str, root: str, train: bool, files: list[Path]):
    """(uint8 images [N,C,H,W], labels, class names) from torchvision's own dataset class, never downloading."""
    from torchvision import datasets

    try:
        if kind == "MNIST":
            ds = datasets.MNIST(root, train=train, download=False)
            pixels = ds.data.numpy()[:, None, :, :]
        else:
            ds = _LocalCIFAR10(root, train=train, download=False)
            pixels = np.asarray(ds.data).transpose(0, 3, 1, 2)
    except Exception as e:  # noqa: BLE001 - torchvision raises RuntimeError/ValueError/AssertionError/pickle errors
        names = ", ".join(p.name for p in files)
        raise UsageError(f"{files[0].parent}: not readable as torchvision {kind} ({names}): "
                         f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
    return np.ascontiguousarray(pixels, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64), ds.classes


def _predefined(splits: dict[str, tuple], classes: list[str], sha: str) -> RawImages:
    (x_train, y_train, _), (x_test, y_test, _) = splits["train"], splits["test"]
    n_train = len(x_train)
    return RawImages(x=np.concatenate([x_train, x_test]), y=np.concatenate([y_train, y_test]), classes=classes,
                     sha256=sha, predefined={"train": np.arange(n_train),
                                             "test": np.arange(n_train, n_train + len(x_test))})


def _cifar10_class():
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        """CIFAR10 that checks the batch files exist instead of their md5 (files are read, never downloaded)."""

        def _check_integrity(self) -> bool:
            return all((Path(self.root) / self.base_folder / name).is_file()
                       for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            import pickle

            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return LocalCIFAR10


def _LocalCIFAR10(*args, **kwargs):  # noqa: N802 - stands for the class, built lazily (torchvision is heavy)
    return _cifar10_class()(*args, **kwargs)
