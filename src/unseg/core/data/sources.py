"""Data sources: where images and label maps come from, behind one interface chosen by `dataset.source`.

A source turns a `DatasetConfig` into an index table, one row per image:
``image_id, split, image_path, label_path, width, height`` (label_path is "" where a split has no labels).
Building the index reads file headers only, never decodes an image. Checks that need a decode (corrupt pixels,
label values) happen when the images are prepared (`unseg.core.data.prepare`).

Sources here: `folder` (ROOT/images/<split>/*.{jpg,jpeg,png} with optional ROOT/labels/<split>/<stem>.png holding
class ids) and `synthetic` (the embedded default: generated deterministically from the seed, written once in the
folder layout, then read as a folder). The benchmark data sets register themselves through `register_source` from
their own modules (`cocostuff27`, `cityscapes27`, `potsdam3`; imported by the package, see `unseg.core.data`): each
brings its index builder, its class names, the `dataset.options` it reads, and a `LabelMap` from the raw ids in its
label files to class ids, which `load_label` applies before the range check. Label and image files ending in `.mat`
(MATLAB v5, the Potsdam crops) hold one array under the key `img` (H, W, C) or `gt` (H, W).

Image files are read as a photo viewer shows them (`load_image`): an EXIF orientation is applied (`folder` and
`synthetic` only, see EXIF_SOURCES; the index then reports the size as shown), 16-bit PNGs are scaled to 8 bits
(value >> 8), and an alpha channel is dropped, the colours kept as stored (a warning names the file where some pixels
are not opaque). Label files are used as stored: a label's own EXIF orientation is ignored with a warning, so a label
must match its image as shown; 16-bit class maps keep their ids. Image ids need to be unique within a split only: each
split is stored and matched on its own.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.io
from PIL import Image, ImageOps, UnidentifiedImageError

from unseg.core.data import synthetic

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
INDEX_COLUMNS = ("image_id", "split", "image_path", "label_path", "width", "height")
BAD_FILE_POLICIES = ("raise", "skip")
SPLIT_ROLES = ("train", "val")
# the array names in .mat image / label files (the IIC/STEGO Potsdam crops: imgs/<id>.mat "img", gt/<id>.mat "gt")
MAT_IMAGE_KEY = "img"
MAT_LABEL_KEY = "gt"
EXIF_ORIENTATION = 0x0112  # the EXIF tag; values 5..8 turn the image by 90 degrees (width and height swap)
_QUARTER_TURNS = (5, 6, 7, 8)
# sources whose images are read as shown, their EXIF orientation applied. The benchmark sources read theirs as stored,
# as the papers' loaders do (PIL without exif_transpose), so that their scores stay comparable with the papers'.
EXIF_SOURCES = frozenset({"folder", "synthetic"})


class BadFileError(ValueError):
    """An input file is missing, unreadable or inconsistent; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass(frozen=True)
class DatasetConfig:
    """The `dataset` parameters block.

    Attributes:
        source: a registered source name (see SOURCES).
        root: the data set's folder (for `synthetic`: where the generated files are written).
        num_classes: K; label values in [0, K) are classes.
        ignore_index: the label value of unlabelled pixels.
        class_names: K names; None takes the source's own (synthetic) or "class_<i>".
        thing_classes / stuff_classes: class ids of things and of stuff, where the data set defines them (then
            evaluation also reports mIoU over each group, as COCO-Stuff-27 papers do); None takes the source's own.
        splits: role (train, val) -> split folder name.
        on_bad_file: "raise" stops at the first bad file; "skip" logs it, leaves it out and counts it.
        resize: evaluation resolution: the shorter side is resized to this (bilinear; labels nearest) ...
        crop: ... then a centre crop of crop x crop (320 in the papers; 322 for DINOv2 /14 backbones).
        seed: seeds the synthetic generator unless `synthetic` has its own `seed` (the default config does, so that
            runs with different method seeds compare on the same scenes).
        synthetic: SyntheticConfig fields for the `synthetic` source.
        options: settings only one source reads (e.g. cocostuff27 `curated_list`, potsdam3 `unlabelled_train`);
            keys are checked against the source's registered defaults, which fill the keys left out.
    """

    source: str
    root: str
    num_classes: int
    ignore_index: int = 255
    class_names: tuple[str, ...] | None = None
    thing_classes: tuple[int, ...] | None = None
    stuff_classes: tuple[int, ...] | None = None
    splits: Mapping[str, str] = field(default_factory=lambda: {"train": "train", "val": "val"})
    on_bad_file: str = "raise"
    resize: int = 320
    crop: int = 320
    seed: int = 0
    synthetic: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown dataset.source {self.source!r}; valid: {', '.join(sorted(SOURCES))}")
        defaults = SOURCE_OPTIONS.get(self.source, {})
        unknown = set(self.options or {}) - set(defaults)
        if unknown:
            raise ValueError(f"unknown dataset.options {sorted(unknown)} for the {self.source} source; valid: "
                             f"{sorted(defaults) if defaults else 'none'}")
        object.__setattr__(self, "options", {**defaults, **(self.options or {})})
        own = SOURCE_CLASSES.get(self.source, {})
        if own and len(own["class_names"]) != self.num_classes:
            raise ValueError(f"the {self.source} source has {len(own['class_names'])} classes; "
                             f"dataset.num_classes is {self.num_classes}")
        for key, value in own.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if self.num_classes < 1:
            raise ValueError(f"dataset.num_classes must be >= 1, got {self.num_classes}")
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"dataset.ignore_index {self.ignore_index} is a class id (num_classes "
                             f"{self.num_classes}); use a value outside [0, num_classes)")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"dataset.class_names has {len(self.class_names)} names for {self.num_classes} classes")
        for group in ("thing_classes", "stuff_classes"):
            ids = getattr(self, group) or ()
            if any(not 0 <= int(i) < self.num_classes for i in ids):
                raise ValueError(f"dataset.{group} {list(ids)} has ids outside [0, {self.num_classes})")
        if set(self.thing_classes or ()) & set(self.stuff_classes or ()):
            raise ValueError(f"dataset.thing_classes and dataset.stuff_classes share ids "
                             f"{sorted(set(self.thing_classes or ()) & set(self.stuff_classes or ()))}")
        if self.on_bad_file not in BAD_FILE_POLICIES:
            raise ValueError(f"dataset.on_bad_file {self.on_bad_file!r}; valid: {', '.join(BAD_FILE_POLICIES)}")
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"dataset.crop must be in (0, dataset.resize], got crop {self.crop}, "
                             f"resize {self.resize}")
        if set(self.splits) != set(SPLIT_ROLES):
            raise ValueError(f"dataset.splits must map exactly {SPLIT_ROLES} to folder names, got {dict(self.splits)}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], seed: int) -> DatasetConfig:
        known = {f for f in cls.__dataclass_fields__ if f != "seed"}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"unknown dataset parameters {sorted(unknown)}; valid: {sorted(known)}")
        values = dict(params)
        for key in ("class_names", "thing_classes", "stuff_classes"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values, seed=seed)

    @property
    def names(self) -> list[str]:
        return list(self.class_names) if self.class_names else [f"class_{i}" for i in range(self.num_classes)]

    @property
    def exif(self) -> bool:
        """Whether images are read as shown, their EXIF orientation applied (see EXIF_SOURCES)."""
        return self.source in EXIF_SOURCES

    @property
    def label_dtype(self) -> str:
        return "uint8" if max(self.num_classes - 1, self.ignore_index) <= 255 and self.ignore_index >= 0 else "int32"


@dataclass
class IndexResult:
    """The index table plus the files left out of it (only with on_bad_file=skip)."""

    table: pd.DataFrame
    skipped: list[dict[str, str]]


class BadFiles:
    """Applies the on_bad_file policy: raise at once, or log, remember and go on."""

    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.skipped: list[dict[str, str]] = []

    def report(self, image_id: str, path: Path | str, problem: str) -> None:
        if self.policy == "raise":
            raise BadFileError(path, problem)
        logger.warning("skipping %s: %s", path, problem)
        self.skipped.append({"id": image_id, "path": str(path), "problem": problem})


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with Image.open(path) as img:
        return img.size


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1..8, 1 = as stored) that opening the file found, without decoding the pixels.

    The base `getexif` reads what the header gave (JPEG's APP1 segment, a PNG eXIf chunk ahead of the pixels, XMP);
    PngImageFile's own decodes every pixel to look for an eXIf chunk after them.
    """
    try:
        value = int(Image.Image.getexif(img).get(EXIF_ORIENTATION, 1))
    except (OSError, ValueError, SyntaxError, TypeError):  # a malformed EXIF block: shown as stored
        return 1
    return value if 1 <= value <= 8 else 1


def shown_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as shown (its EXIF orientation applied), from the file header."""
    with Image.open(path) as img:
        width, height = img.size
        return (height, width) if _orientation(img) in _QUARTER_TURNS else (width, height)


def exif_orientation(path: Path | str) -> int:
    """The image file's EXIF orientation (1 where it has none or cannot be read); for error messages."""
    try:
        with Image.open(path) as img:
            img.load()
            return _orientation(img)
    except (OSError, ValueError, SyntaxError):
        return 1


def size_mismatch(label_wh: tuple[int, int], image: Path | str, image_wh: tuple[int, int], exif: bool = True) -> str:
    """The problem of a label whose (width, height) differs from its image's; with `exif` (the image is read as
    shown), names an EXIF orientation that turned the image."""
    problem = (f"label size {label_wh[0]}x{label_wh[1]} differs from image {Path(image).name} size "
               f"{image_wh[0]}x{image_wh[1]}")
    orientation = exif_orientation(image) if exif and label_wh == image_wh[::-1] else 1
    if orientation in _QUARTER_TURNS:
        problem += (f" as shown: its EXIF orientation {orientation} turns the stored {label_wh[0]}x{label_wh[1]} "
                    f"pixels by 90 degrees, and images are used as shown while labels are used as stored (rotate "
                    f"the label, or strip the tag from the image)")
    return problem


SizeReader = Callable[[Path], tuple[int, int]]
# what a size reader raises on a broken file (PIL: UnidentifiedImageError is an OSError, SyntaxError = broken chunk)
_UNREADABLE = (OSError, ValueError, SyntaxError)


def index_row(bad: BadFiles, image_id: str, role: str, image: Path, label: Path | None,
              image_size: SizeReader = header_size, label_size: SizeReader = header_size
              ) -> tuple[str, str, str, str, int, int] | None:
    """One row of the index table, from file headers only; None where a file is bad (then reported to `bad`).

    Args:
        bad: the on_bad_file policy that reports an unreadable image or label, or a label of another size.
        image_id / role: the row's id and split role.
        image: the image file; label: its label file, or None where the split has no labels.
        image_size / label_size: (width, height) from a file's header (`shown_size` for images read as shown, see
            EXIF_SOURCES); raise OSError or ValueError when unreadable.
    """
    try:
        width, height = image_size(image)
    except _UNREADABLE as err:
        bad.report(image_id, image, f"unreadable image ({err.__class__.__name__}: {err})")
        return None
    if label is None:
        return image_id, role, str(image), "", width, height
    try:
        label_wh = label_size(label)
    except _UNREADABLE as err:
        bad.report(image_id, label, f"unreadable label ({err.__class__.__name__}: {err})")
        return None
    if label_wh != (width, height):
        bad.report(image_id, label, size_mismatch(label_wh, image, (width, height), image_size is shown_size))
        return None
    return image_id, role, str(image), str(label), width, height


def make_index(rows: list[tuple[str, str, str, str, int, int]], skipped: list[dict[str, str]],
               root: Path) -> IndexResult:
    """The index table of `rows` (INDEX_COLUMNS order).

    Ids need to be unique within a split only: every split is prepared into its own store, and predictions are
    matched to labels within the val split, so train and val may both number their images from 1.

    Raises:
        BadFileError: (naming root) an image id appears twice in one split (e.g. a.png and a.jpg).
    """
    table = pd.DataFrame(rows, columns=list(INDEX_COLUMNS)).astype({"width": "int32", "height": "int32"})
    for role, ids in table.groupby("split", sort=False)["image_id"]:
        duplicated = ids[ids.duplicated()]
        if len(duplicated):
            raise BadFileError(root, f"image ids appear twice in the {role} split: {sorted(set(duplicated))[:5]}")
    return IndexResult(table, skipped)


# ---------------------------------------------------------------------------------------------------- folder source
def index_folder(config: DatasetConfig, root: Path | None = None) -> IndexResult:
    """Indexes ROOT/images/<split>/*.{jpg,jpeg,png} and their labels ROOT/labels/<split>/<stem>.png.

    The val split must have labels (evaluation needs them); for train they are optional (used only by the
    supervised linear probe and by tests). Where a labels folder exists, every image needs its label.

    Raises:
        FileNotFoundError: the root or a split folder is missing.
        BadFileError: an empty split, a missing/unreadable label or image, a label whose size differs from its
            image (with on_bad_file=raise).
    """
    root = Path(root or config.root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist (dataset.root)")
    bad = BadFiles(config.on_bad_file)
    rows = []
    for role in SPLIT_ROLES:
        split = config.splits[role]
        image_dir, label_dir = root / "images" / split, root / "labels" / split
        skipped_before = len(bad.skipped)
        if not image_dir.is_dir():
            raise FileNotFoundError(f"{image_dir}: split folder for the {role} split is missing")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise BadFileError(image_dir, f"empty split, no {'/'.join(IMAGE_SUFFIXES)} images")
        has_labels = label_dir.is_dir()
        if role == "val" and not has_labels:
            raise FileNotFoundError(f"{label_dir}: the val split needs labels for evaluation")
        for path in images:
            label = label_dir / f"{path.stem}.png" if has_labels else None
            if label is not None and not label.is_file():
                bad.report(path.stem, label, f"missing label for image {path.name}")
                continue
            row = index_row(bad, path.stem, role, path, label, shown_size)
            if row is not None:
                rows.append(row)
        if not any(r[1] == role for r in rows):
            raise BadFileError(image_dir, f"empty {role} split: all {len(bad.skipped) - skipped_before} images were "
                                          f"skipped as bad (dataset.on_bad_file=skip; the warnings above name them)")
    return make_index(rows, bad.skipped, root)


# ------------------------------------------------------------------------------------------------- synthetic source
def materialise_synthetic(config: DatasetConfig) -> Path:
    """Writes the synthetic data set in the folder layout under config.root, once per generator config.

    A marker file records the generator config; a root whose marker matches is reused as it is. A new set is
    written beside the root and swapped in only when complete, so a killed run never leaves half a data set.
    """
    gen = synthetic.SyntheticConfig(**{"seed": config.seed, **config.synthetic})  # its own seed wins
    root = Path(config.root)
    marker = {"generator": "unseg.synthetic", "config": {k: getattr(gen, k) for k in gen.__dataclass_fields__},
              "splits": dict(config.splits)}
    marker_path = root / "synthetic.json"
    if marker_path.is_file() and json.loads(marker_path.read_text()) == marker:
        return root
    staging = root.with_name(f".{root.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("Generating the synthetic data set (%d train, %d val, seed %d) in %s", gen.num_train, gen.num_val,
                gen.seed, root)
    for role in SPLIT_ROLES:
        split = config.splits[role]
        (staging / "images" / split).mkdir(parents=True)
        (staging / "labels" / split).mkdir(parents=True)
        for image_id, image, label in synthetic.iter_split(gen, role):
            Image.fromarray(image).save(staging / "images" / split / f"{image_id}.png")
            Image.fromarray(label).save(staging / "labels" / split / f"{image_id}.png")
    (staging / "synthetic.json").write_text(json.dumps(marker, indent=1))
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, root)
    return root


def index_synthetic(config: DatasetConfig) -> IndexResult:
    return index_folder(config, materialise_synthetic(config))


# ---------------------------------------------------------------------------------------------------- label maps
class LabelMap:
    """Raw ids in a data set's label files -> class ids, through a lookup table.

    Args:
        classes: raw id -> class id in [0, K).
        ignored: raw ids that mean "unlabelled"; they become ignore_index.
    Raw ids in neither are unexpected: calling the map raises ValueError naming them.
    """

    def __init__(self, classes: Mapping[int, int], ignored: tuple[int, ...] = ()) -> None:
        shared = set(classes) & set(ignored)
        if shared:
            raise ValueError(f"raw ids {sorted(shared)} are both classes and ignored")
        self.classes = dict(classes)
        self.ignored = tuple(ignored)
        known = [*self.classes, *self.ignored]
        self._low = min(known)
        # lookup table over [low, high]: class id, -1 for ignored, -2 for unexpected
        self._table = np.full(max(known) - self._low + 1, -2, dtype=np.int64)
        for raw, class_id in self.classes.items():
            self._table[raw - self._low] = class_id
        self._table[np.asarray(self.ignored, dtype=np.int64) - self._low] = -1

    def describe(self) -> str:
        """The raw ids the map accepts, as ranges: "0..181, 255"."""
        ids, spans = sorted([*self.classes, *self.ignored]), []
        for value in ids:
            if spans and value == spans[-1][1] + 1:
                spans[-1][1] = value
            else:
                spans.append([value, value])
        return ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in spans)

    def __call__(self, raw: np.ndarray, ignore_index: int) -> np.ndarray:
        """Class ids of raw label ids.

        Args:
            raw: (H, W) integer array of raw ids.
            ignore_index: the value written for ignored raw ids.

        Returns:
            (H, W) int64 array of class ids in [0, K) or ignore_index.

        Raises:
            ValueError: raw holds ids the map does not know (the message lists up to 10 of them).
        """
        offset = np.asarray(raw, dtype=np.int64) - self._low
        inside = (offset >= 0) & (offset < len(self._table))
        mapped = np.where(inside, self._table[np.where(inside, offset, 0)], -2)
        unexpected = mapped == -2
        if unexpected.any():
            values = np.unique(raw[unexpected])
            raise ValueError(f"unexpected label ids {values[:10].tolist()}; the raw ids are {self.describe()}")
        return np.where(mapped == -1, ignore_index, mapped)


# ------------------------------------------------------------------------------------------------------- registry
SOURCES: dict[str, Callable[[DatasetConfig], IndexResult]] = {
    "folder": index_folder,
    "synthetic": index_synthetic,
}
# classes a source defines itself; DatasetConfig fields left null take these
SOURCE_CLASSES: dict[str, dict[str, tuple[Any, ...]]] = {
    "synthetic": {"class_names": synthetic.CLASS_NAMES, "thing_classes": synthetic.THING_CLASSES,
                  "stuff_classes": synthetic.STUFF_CLASSES},
}
# raw label ids -> class ids, applied by load_label before the range check (none: the files hold class ids)
LABEL_MAPS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {}
# the dataset.options keys a source reads, with their defaults (sources not listed take no options)
SOURCE_OPTIONS: dict[str, dict[str, Any]] = {}


def register_source(name: str, index: Callable[[DatasetConfig], IndexResult], *,
                    classes: Mapping[str, tuple[Any, ...]] | None = None,
                    label_map: Callable[[np.ndarray, int], np.ndarray] | None = None,
                    options: Mapping[str, Any] | None = None) -> None:
    """Registers a data source under `name` (the value of dataset.source).

    Args:
        name: the source's name.
        index: builds the index table from a DatasetConfig (file headers only).
        classes: the source's own class_names (and thing_classes / stuff_classes where it defines them).
        label_map: raw label ids -> class ids (raising ValueError on unexpected ids), applied by load_label.
        options: the dataset.options keys the source reads, with their defaults.

    Raises:
        ValueError: the name is taken.
    """
    if name in SOURCES:
        raise ValueError(f"dataset source {name!r} is already registered")
    SOURCES[name] = index
    if classes:
        SOURCE_CLASSES[name] = dict(classes)
    if label_map is not None:
        LABEL_MAPS[name] = label_map
    if options:
        SOURCE_OPTIONS[name] = dict(options)


def build_index(config: DatasetConfig) -> IndexResult:
    """The index table of config's source; see the module docstring."""
    return SOURCES[config.source](config)


_LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L", "1")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")  # PNG greyscale at 16 bits per pixel (older Pillow: "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _read_mat(path: str | Path, key: str, what: str) -> np.ndarray:
    """The array `key` of a MATLAB v5 file.

    Raises:
        BadFileError: the file cannot be read, or holds no array `key`.
    """
    try:
        content = scipy.io.loadmat(path, variable_names=[key])
    except Exception as err:  # scipy raises OSError, ValueError, IndexError, MatReadError ... on broken files
        raise BadFileError(path, f"corrupt or unreadable {what} ({err.__class__.__name__}: {err})") from err
    if key not in content:
        names = [name for name, _, _ in scipy.io.whosmat(path)]
        raise BadFileError(path, f"{what} .mat file has no array {key!r} (it has {names})")
    return np.asarray(content[key])


def load_label(path: str | Path, config: DatasetConfig) -> np.ndarray:
    """Decodes a label map, maps its raw ids to class ids (where the source has a LabelMap) and checks its values.

    The label is used as stored: an EXIF orientation tag on it is ignored (with a warning naming the file), since
    photo tools write the tag on the photo and a label is drawn on the photo as shown. 16-bit PNGs keep their ids.

    Returns:
        (H, W) array of ids in [0, num_classes) or ignore_index.

    Raises:
        BadFileError: unreadable or corrupt, not a single-channel image (or 2-D integer .mat array), raw ids the
            source's label map does not know, or values outside [0, num_classes) other than ignore_index.
    """
    if Path(path).suffix.lower() == ".mat":
        label = _read_mat(path, MAT_LABEL_KEY, "label")
        if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
            raise BadFileError(path, f"label array {MAT_LABEL_KEY!r} has shape {label.shape} and dtype "
                                     f"{label.dtype}; expected a 2-D integer array of class ids")
        label = label.astype(np.int64)
    else:
        try:
            with Image.open(path) as img:
                mode = img.mode
                if mode in _LABEL_MODES:
                    label = np.asarray(img).astype(np.int64)
                    orientation = _orientation(img)
                    if orientation != 1:
                        logger.warning("%s: EXIF orientation %d ignored: labels are used as stored", path,
                                       orientation)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:  # PIL: SyntaxError = broken chunk
            raise BadFileError(path, f"corrupt or unreadable label ({err.__class__.__name__}: {err})") from err
        if mode not in _LABEL_MODES:
            raise BadFileError(path, f"label has mode {mode}; expected a single-channel image of class ids")
    label_map = LABEL_MAPS.get(config.source)
    if label_map is not None:
        try:
            label = label_map(label, config.ignore_index)
        except ValueError as err:
            raise BadFileError(path, f"{err} (dataset.source {config.source})") from err
    invalid = (label >= config.num_classes) & (label != config.ignore_index) | (label < 0)
    if invalid.any():
        values = np.unique(label[invalid])
        raise BadFileError(path, f"label values {values[:10].tolist()} are outside [0, {config.num_classes}) "
                                 f"and not ignore_index {config.ignore_index}")
    return label


def image_to_rgb(img: Image.Image, path: str | Path) -> np.ndarray:
    """uint8 RGB (H, W, 3) of a decoded PIL image.

    16-bit greyscale (mode I;16 / I) is scaled to 8 bits as value >> 8 (Pillow already reads 16-bit colour PNGs
    that way; PIL's own convert would saturate every value above 255). An alpha channel (or a palette's or colour's
    transparency) is dropped and the colours are kept as stored; where some pixels are not fully opaque a warning
    names the file and the count.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = (np.clip(np.asarray(img).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"))
        see_through = int(np.count_nonzero(rgba[:, :, 3] < 255))
        if see_through:
            logger.warning("%s: alpha channel dropped: %d of %d pixels are not fully opaque; their colours are used "
                           "as stored", path, see_through, rgba.shape[0] * rgba.shape[1])
        return np.ascontiguousarray(rgba[:, :, :3])
    return np.asarray(img.convert("RGB"))


def load_image(path: str | Path, exif: bool = True) -> np.ndarray:
    """Decodes an image to uint8 RGB (H, W, 3): see `image_to_rgb` for 16-bit and alpha. With `exif`, as shown: the
    EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so (H, W) may be the stored (W, H).

    A .mat file holds the array `img` (H, W) or (H, W, C >= 3) uint8; channels past the third (the infrared of the
    Potsdam RGB-IR crops) are dropped.

    Raises:
        BadFileError: the file cannot be decoded, or a .mat array is not uint8 (H, W) / (H, W, >= 3).
    """
    if Path(path).suffix.lower() == ".mat":
        array = _read_mat(path, MAT_IMAGE_KEY, "image")
        if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] < 3):
            raise BadFileError(path, f"image array {MAT_IMAGE_KEY!r} has shape {array.shape} and dtype {array.dtype};"
                                     f" expected uint8 (H, W) or (H, W, C >= 3)")
        if array.ndim == 2:
            return np.repeat(array[:, :, None], 3, axis=2)
        return np.ascontiguousarray(array[:, :, :3])
    try:
        with Image.open(path) as img:
            if exif:
                ImageOps.exif_transpose(img, in_place=True)
            return image_to_rgb(img, path)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:  # PIL: SyntaxError = broken PNG chunk
        raise BadFileError(path, f"corrupt or unreadable image ({err.__class__.__name__}: {err})") from err
