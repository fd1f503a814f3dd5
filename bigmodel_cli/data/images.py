"""Images to uint8 arrays: a class-per-folder tree decoded in parallel, and the one function that makes any image
(a file, a PIL image, an array) into the [C, H, W] uint8 array a model was trained on.

    files, labels, classes = list_folder("photos/")           # photos/<class>/*.png|jpg
    splits = split_folders("photos/")                          # photos/{train,val,test}/<class>/, or None
    x, ok, bad = decode_files(files, size=32, channels=3, on_bad="skip", new_array=scratch.array)
    x = to_array(Image.open("cat.jpg"), size=32, channels=3)  # what eval/serve feed the model

Images of any size and mode are converted (palette, alpha, 16-bit, CMYK) and resized to
`size` x `size` with antialiasing; they are stored as uint8 so that training reads them
without decoding again. Decoding runs in a thread pool with a bounded window of files in
flight, each image written into the output array as soon as it is decoded.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_cli.errors import UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F")


SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def split_folders(root: str | Path) -> dict[str, Path] | None:
    """{split: folder} when ROOT holds only train/ and test/ (and val/) folders of class folders, else None."""
    root = Path(root)
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    names = [SPLIT_FOLDERS.get(p.name.lower()) for p in folders]
    if None in names or len(set(names)) != len(names) or not {"train", "test"} <= set(names):
        return None
    if not all(any(c.is_dir() and not c.name.startswith(".") for c in p.iterdir()) for p in folders):
        return None
    found = dict(zip(names, folders, strict=True))
    return {s: found[s] for s in ("train", "val", "test") if s in found}


class FileList(Sequence[Path]):
    """Image files as a list, stored as their class folder and their names' bytes (not a Path object per file).

    A Path costs about 500 bytes of private memory; a name costs its length and 12 bytes.
    """

    def __init__(self) -> None:
        self.folders: list[Path] = []
        self._folder = np.zeros(0, dtype=np.int32)
        self._blob = bytearray()
        self._ends = np.zeros(0, dtype=np.int64)

    def add(self, folder: Path, names: list[str]) -> None:
        """Files `folder`/name for each name (a path relative to the folder), in that order."""
        encoded = [os.fsencode(n) for n in names]
        ends = len(self._blob) + np.cumsum([len(e) for e in encoded], dtype=np.int64)
        self._blob += b"".join(encoded)
        self._ends = np.concatenate([self._ends, ends])
        self._folder = np.concatenate([self._folder, np.full(len(names), len(self.folders), dtype=np.int32)])
        self.folders.append(folder)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = int(self._ends[i - 1]) if i else 0
        return self.folders[self._folder[i]] / os.fsdecode(bytes(self._blob[start:int(self._ends[i])]))


def _image_names(folder: Path) -> list[str]:
    """Image files anywhere under `folder`, relative to it, in Path order (what sorted(folder.rglob("*")) gives)."""
    names: list[str] = []

    def walk(path: str, prefix: str) -> None:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir() and not entry.is_symlink():
                    walk(entry.path, f"{prefix}{entry.name}/")
                elif _suffix(entry.name) in IMAGE_SUFFIXES and entry.is_file():
                    names.append(prefix + entry.name)

    walk(str(folder), "")
    if any("/" in n for n in names):
        names.sort(key=lambda n: n.split("/"))  # by path components, as Paths sort
    else:
        names.sort()
    return names


def _suffix(name: str) -> str:
    i = name.rfind(".")
    return name[i:].lower() if 0 < i < len(name) - 1 else ""


def list_split_folders(splits: dict[str, Path]) -> tuple[FileList, np.ndarray, list[str], dict[str, np.ndarray]]:
    """Files of every split folder (train, val, test in turn), class indices over the union of their class folders
    (sorted), the class names, and each split's rows."""
    found = {s: _class_folders(folder) for s, folder in splits.items()}
    classes = sorted({name for listed in found.values() for name, _ in listed})
    files = FileList()
    labels: list[np.ndarray] = []
    rows: dict[str, np.ndarray] = {}
    for s, listed in found.items():
        start = len(files)
        for name, names in listed:
            files.add(splits[s] / name, names)
            labels.append(np.full(len(names), classes.index(name), dtype=np.int64))
        rows[s] = np.arange(start, len(files))
    return files, np.concatenate(labels), classes, rows


def _class_folders(root: Path) -> list[tuple[str, list[str]]]:
    """(class name, image names) of each class folder of ROOT that holds images, sorted by name; clear errors."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UsageError(f"{root}: no class folders; expected {root}/<class>/<image>.png (one folder per class)")
    listed = [(folder.name, names) for folder in folders if (names := _image_names(folder))]
    if not listed:
        raise UsageError(f"{root}: no images in its class folders ({', '.join(f.name for f in folders[:5])}); "
                         f"expected files ending in {', '.join(IMAGE_SUFFIXES[:4])}...")
    return listed


def list_folder(root: str | Path) -> tuple[FileList, np.ndarray, list[str]]:
    """Image files under ROOT/<class>/ (sorted), their class indices, and the class names (sorted folder names)."""
    root = Path(root)
    files = FileList()
    labels: list[np.ndarray] = []
    classes: list[str] = []
    for name, names in _class_folders(root):
        files.add(root / name, names)
        labels.append(np.full(len(names), len(classes), dtype=np.int64))
        classes.append(name)
    return files, np.concatenate(labels), classes


def empty_class_folders(root: str | Path, classes: list[str]) -> list[str]:
    root = Path(root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in classes)


def probe(files: Sequence[Path]) -> tuple[tuple[int, int] | None, int]:
    """(common (width, height) or None when sizes differ, 1 or 3 channels) from the files' headers only."""
    from PIL import Image

    sizes: set[tuple[int, int]] = set()
    grey = True
    for path in files:
        try:
            with Image.open(path) as im:
                sizes.add(im.size)
                grey = grey and im.mode in GREY_MODES
        except Exception:  # noqa: BLE001 - unreadable files are reported by decode_files
            continue
    return (next(iter(sizes)) if len(sizes) == 1 else None), (1 if grey else 3)


def to_array(image: Any, size: int | tuple[int, int] | None, channels: int) -> np.ndarray:
    """One image (path, PIL image, or HxW / HxWxC array) as uint8 [channels, H, W], resized to `size`."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)) or hasattr(image, "read"):
        with Image.open(image) as im:
            im.load()
            return to_array(im, size, channels)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(_as_uint8(image))
    im = image
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "F"):
        im = Image.fromarray(_as_uint8(np.asarray(im)))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = _on_white(im.convert("RGBA"))
    im = im.convert("L" if channels == 1 else "RGB")
    if size is not None:
        width, height = (size, size) if isinstance(size, int) else size
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    pixels = np.asarray(im, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _as_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    if np.issubdtype(pixels.dtype, np.floating) and pixels.size and float(np.nanmax(pixels)) <= 1.0:
        pixels = pixels * 255.0
    elif pixels.dtype in (np.uint16, np.int32, np.uint32) and pixels.size and pixels.max() > 255:
        pixels = pixels / 257.0
    return np.clip(np.nan_to_num(pixels), 0, 255).astype(np.uint8)


def _on_white(rgba):
    from PIL import Image

    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def decode_files(files: Sequence[Path], size: int | tuple[int, int], channels: int, on_bad: str,
                 new_array: Callable[..., np.ndarray] | None = None,
                 on_digest: Callable[[int, str], None] | None = None,
                 workers: int | None = None) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Decode every file in parallel into uint8 [N_ok, C, H, W]; unreadable files skipped and listed, or an error.

    Returns the readable images (in order; an array from `new_array(name, dtype, shape)`,
    file-backed when that makes such arrays), the boolean mask of which files they are, and
    `bad` ([{"file", "error"}] for the others). `on_digest(i, sha256_hex)` gets each file's
    SHA-256 in file order (read once, hashed and decoded; "" when the file cannot be read).
    """
    import hashlib
    import io

    workers = workers or min(8, os.cpu_count() or 1)
    width, height = (size, size) if isinstance(size, int) else size
    new_array = new_array or (lambda name, dtype, shape: np.empty(shape, dtype=dtype))
    out = new_array("images", np.uint8, (len(files), channels, height, width))
    ok = np.zeros(len(files), dtype=bool)
    bad: list[dict[str, str]] = []

    def one(path: Path) -> tuple[np.ndarray | str, str]:
        try:
            data = path.read_bytes()
        except OSError as e:
            return f"cannot read ({e.strerror})", ""
        digest = hashlib.sha256(data).hexdigest()
        try:
            return to_array(io.BytesIO(data), size, channels), digest
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            message = (str(e).splitlines() or [type(e).__name__])[0]
            return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", message), digest

    n_ok = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        window = workers * 8  # files in flight: decoded images wait here at most this many
        pending: deque = deque(pool.submit(one, path) for path in files[:window])
        for i, path in enumerate(files):
            result, digest = pending.popleft().result()
            if i + window < len(files):
                pending.append(pool.submit(one, files[i + window]))
            if on_digest:
                on_digest(i, digest)
            if isinstance(result, str):
                if on_bad == "error":
                    for future in pending:
                        future.cancel()
                    raise UsageError(f"{path}: unreadable image ({result}); fix or remove it, or set "
                                     f"data.on_bad_file=skip")
                bad.append({"file": str(path), "error": result})
                continue
            out[n_ok] = result
            ok[i] = True
            n_ok += 1
    if not n_ok:
        raise UsageError(f"{files[0].parent.parent}: none of the {len(files)} images could be read "
                         f"(first: {bad[0]['file']}: {bad[0]['error']})")
    return out[:n_ok], ok, bad


# ---------------------------------------------------------------- new images, a chunk at a time (predict, serve)

LIST_SUFFIXES = (".txt", ".lst")  # a file listing images, one path per line (relative to the list's folder)


def list_images(paths: Sequence[str | Path]) -> FileList:
    """The image files named by `paths`, in order: a folder gives every image under it (sorted, sub-folders
    included), an image file itself, a .txt/.lst file the images it lists one per line."""
    files = FileList()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            names = _image_names(path)
            if not names:
                raise UsageError(f"{path}: no images (files ending in {', '.join(IMAGE_SUFFIXES[:4])}...) in this "
                                 f"folder or below")
            files.add(path, names)
        elif not path.exists():
            raise UsageError(f"{path}: no such file or folder")
        elif _suffix(path.name) in LIST_SUFFIXES:
            files.add(path.parent, _listed(path))
        elif _suffix(path.name) in IMAGE_SUFFIXES:
            files.add(path.parent, [path.name])
        else:
            raise UsageError(f"{path}: not an image file ({', '.join(IMAGE_SUFFIXES[:4])}...), a folder of images, "
                             f"or a .txt list of image paths")
    return files


def _listed(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not a readable list of image paths ({e})") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise UsageError(f"{path}: lists no image paths (one per line)")
    return names


def decode_chunks(files: Sequence[Path], size: int | tuple[int, int], channels: int, rows: int = 256,
                  workers: int | None = None) -> Iterator[tuple[int, np.ndarray, dict[int, str]]]:
    """(first, uint8 [n, C, H, W], {index in the chunk: why that image is unreadable}) for `rows` files at a time.

    Files are decoded by a pool of threads, at most a few chunks ahead of the one being
    handed out, so memory stays bounded by a few chunks; an unreadable file is left as
    zeros and reported, never raised.
    """
    import io

    workers = workers or min(8, os.cpu_count() or 1)
    width, height = (size, size) if isinstance(size, int) else size

    def one(path: Path) -> np.ndarray | str:
        try:
            data = path.read_bytes()
        except OSError as e:
            return f"cannot read it ({e.strerror})"
        try:
            return to_array(io.BytesIO(data), size, channels)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            message = (str(e).splitlines() or [type(e).__name__])[0]
            return "unreadable image (" + re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", message) + ")"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        window = max(rows * 2, workers * 8)
        pending: deque = deque(pool.submit(one, files[i]) for i in range(min(window, len(files))))
        submitted = len(pending)
        for first in range(0, len(files), rows):
            n = min(rows, len(files) - first)
            out = np.zeros((n, channels, height, width), dtype=np.uint8)
            bad: dict[int, str] = {}
            for i in range(n):
                result = pending.popleft().result()
                if submitted < len(files):
                    pending.append(pool.submit(one, files[submitted]))
                    submitted += 1
                if isinstance(result, str):
                    bad[i] = result
                else:
                    out[i] = result
            yield first, out, bad
