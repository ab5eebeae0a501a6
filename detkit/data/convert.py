"""Converting annotations between dataset formats: ``detkit data convert``.

Sources: COCO (an instances json and its images), Pascal VOC (a root folder and a
split), VIA (a folder with ``via_region_data.json``) and YOLO (a ``data.yaml`` or a
dataset folder). Targets: COCO and YOLO. Every source is read by its detkit dataset
(:class:`~detkit.data.coco.CocoDataset`, ...), so a conversion refuses what training
would refuse, and goes through the COCO dict those datasets give
(:meth:`~detkit.data.base.DetectionDataset.coco_gt`).

Output layout (``OUT`` is a folder; one split per conversion, more conversions into
the same ``OUT`` add splits)::

    --to yolo:  OUT/data.yaml  OUT/images/<split>/<file>  OUT/labels/<split>/<file stem>.txt
    --to coco:  OUT/annotations/instances_<split>.json  OUT/<split>/<file>

The images are **linked** (symbolic links to the source files, absolute), not
copied, unless ``copy_images``; YOLO's label rule (``/images/`` -> ``/labels/``)
needs them under ``OUT/images``, and COCO's layout finds them in ``OUT/<split>``.
Where links cannot be made (a file system without them) the images are copied,
with a warning. ``data.yaml`` names the split folders relative to itself (no
``path:``), so ``OUT`` can be moved whole; converting another split into the same
``OUT`` adds its key to the existing ``data.yaml`` (the class names must agree).

What changes on the way:

* **YOLO output.** A polygon segmentation becomes a polygon line (its box is then
  the polygon's extent, as YOLO readers take it); an object of several polygons
  becomes one polygon, the parts joined by zero-width bridges between their closest
  points (as Ultralytics' converter does). Objects without polygons (no
  segmentation, or a non-crowd RLE mask) become box lines. **Crowd regions are
  dropped**, with a warning: YOLO has no crowd or ignore flag, and a crowd box
  trained as one object would teach the wrong thing. Class ``k`` is the ``k``-th
  category in id order; COCO category ids are not kept (names are). Coordinates
  are written with 6 decimals (under 0.001 px on a 1000 px image).
* **COCO output.** Boxes, polygons, crowd flags and the source's category ids and
  image ids are kept; file names are relative to ``OUT/<split>``.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

from detkit.data.base import DetectionDataset
from detkit.data.yolo import SPLIT_KEYS, label_path, parse_names, read_data_yaml, read_image_size
from detkit.errors import DataError
from detkit.io import write_json, write_text
from detkit.progress import progress as show_progress

__all__ = [
    "SOURCE_FORMATS",
    "TARGET_FORMATS",
    "ConvertReport",
    "Source",
    "convert",
    "merge_polygons",
    "read_source",
    "source_splits",
    "write_coco",
    "write_yolo",
    "yaml_split_key",
]

SOURCE_FORMATS: tuple[str, ...] = ("coco", "voc", "via", "yolo")
TARGET_FORMATS: tuple[str, ...] = ("coco", "yolo")

_DECIMALS = 6


@dataclass
class Source:
    """Annotations to convert, as a COCO dict, and the file of every image.

    Attributes:
        format: the source format (``coco``, ``voc``, ``via``, ``yolo``).
        path: what was read.
        split: the split name the output gets.
        class_names: label ``k``'s name; ``category_ids[k]`` its COCO category id.
        coco: ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``,
            ``categories``, as :meth:`DetectionDataset.coco_gt` gives them.
        files: image id -> the image file.
    """

    format: str
    path: Path
    split: str
    class_names: list[str]
    category_ids: list[int]
    coco: dict[str, Any]
    files: dict[int, Path]


@dataclass
class ConvertReport:
    """What one conversion wrote, for the summary line."""

    source: str
    target: str
    split: str
    num_images: int = 0
    num_objects: int = 0
    num_polygons: int = 0
    num_crowd_dropped: int = 0
    num_rle_as_boxes: int = 0
    num_empty_dropped: int = 0
    images_mode: str = "linked"
    images_dir: Path = field(default_factory=Path)
    written: Path = field(default_factory=Path)

    def summary(self) -> str:
        """One line: counts, what was dropped, where the output is."""
        notes = []
        if self.num_crowd_dropped:
            notes.append(f"{self.num_crowd_dropped} crowd regions dropped")
        if self.num_empty_dropped:
            notes.append(f"{self.num_empty_dropped} empty boxes dropped")
        if self.num_rle_as_boxes:
            notes.append(f"{self.num_rle_as_boxes} RLE masks written as boxes")
        dropped = f"; {', '.join(notes)}" if notes else ""
        return (
            f"{self.source} -> {self.target} ({self.split}): {self.num_images} images, {self.num_objects} objects "
            f"({self.num_polygons} polygons){dropped}; images {self.images_mode} in {self.images_dir}; "
            f"wrote {self.written}"
        )


# ----------------------------------------------------------------------------- sources


def source_splits(fmt: str, src: str | Path, split: str | None) -> list[str | None]:
    """The splits one ``convert`` call handles: ``split``, or for a YOLO source without one every split it lists."""
    if fmt != "yolo" or split is not None:
        return [split]
    path = Path(src)
    file = path if path.is_file() else next((path / n for n in ("data.yaml", "data.yml") if (path / n).is_file()), None)
    if file is None:
        return ["train"]
    data = read_data_yaml(file)
    present = [k for k in SPLIT_KEYS if data.get(k)]
    if not present:
        raise DataError(f"YOLO data file '{file}' lists no split (train:, val:, test:)")
    return list(present)


def read_source(fmt: str, src: str | Path, *, images: str | Path | None = None, split: str | None = None) -> Source:
    """Read ``src`` in format ``fmt`` (one of :data:`SOURCE_FORMATS`).

    Args:
        images: the image folder of a COCO json (default: where CocoDataset looks).
        split: the VOC split (default ``trainval``) or YOLO split (default ``train``)
            to read; for COCO and VIA sources, the name of the output split (default:
            the json's name after ``instances_``, the VIA folder's name).

    Raises:
        DataError: the source cannot be read (the message names the file and record).
    """
    path = Path(src)
    if images is not None and fmt != "coco":
        raise DataError(f"--images is for COCO sources (the folder of the json's images), not {fmt}")
    dataset: DetectionDataset
    if fmt == "coco":
        from detkit.data.coco import CocoDataset

        dataset = CocoDataset(ann_file=path, images=images)
        name = split or _coco_split_name(path)
        coco = dataset.coco_gt().dataset
    elif fmt == "voc":
        from detkit.data.voc import VocDataset

        dataset = VocDataset(root=path, split=split or "trainval")
        name = dataset.split
        coco = dataset.coco_gt().dataset
    elif fmt == "via":
        from detkit.data.via import ViaDataset

        dataset = ViaDataset(root=path)
        name = split or path.resolve().name
        coco = dataset.coco_gt().dataset
    elif fmt == "yolo":
        from detkit.data.yolo import YoloDataset

        if path.is_dir():
            dataset = YoloDataset(root=path, split=split or "train")
        else:
            dataset = YoloDataset(yaml=path, split=split or "train")
        name = dataset.split
        coco = dataset.coco_dict()
    else:
        raise DataError(f"unknown source format {fmt!r}; one of: {', '.join(SOURCE_FORMATS)}")
    files = {image_id: dataset.image_path(i) for i, image_id in enumerate(dataset.image_ids)}
    return Source(
        format=fmt,
        path=path,
        split=name,
        class_names=list(dataset.class_names),
        category_ids=list(dataset.category_ids),
        coco=coco,
        files=files,
    )


def _coco_split_name(ann_file: Path) -> str:
    """``instances_val2017.json`` -> ``val2017``; any other json -> its stem."""
    stem = ann_file.stem
    return stem[len("instances_") :] if stem.startswith("instances_") and len(stem) > len("instances_") else stem


# ----------------------------------------------------------------------------- geometry


def merge_polygons(parts: list[list[float]]) -> list[float]:
    """Join the polygons of one object into one polygon ``[x0, y0, x1, y1, ...]``.

    Each further part is spliced in at the pair of vertices closest to the polygon
    built so far: the outline walks to the part, around it, and back the same way (a
    bridge of zero width), so the joined polygon covers the same pixels as the parts.
    """
    rings = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in parts]
    merged = rings[0]
    for ring in rings[1:]:
        # (P, 1, 2) - (1, Q, 2) -> (P, Q) squared distances between the vertices
        d2 = ((merged[:, None, :] - ring[None, :, :]) ** 2).sum(-1)
        a, b = np.unravel_index(int(np.argmin(d2)), d2.shape)
        around = np.concatenate([ring[b:], ring[: b + 1]])  # from vertex b around and back to it
        merged = np.concatenate([merged[: a + 1], around, merged[a:]])
    return [float(v) for v in merged.reshape(-1)]


def _polygons(segmentation: Any) -> list[list[float]]:
    """The usable polygons of a COCO segmentation (3 points or more); ``[]`` for RLE or none."""
    if not isinstance(segmentation, list):
        return []
    return [[float(v) for v in p] for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]


def _fmt(values: Iterable[float]) -> str:
    return " ".join(f"{v:.{_DECIMALS}f}" for v in values)


# ----------------------------------------------------------------------------- output helpers


def _sizes(source: Source) -> dict[int, tuple[int, int]]:
    """Image id -> ``(width, height)``: the COCO dict's, else the image header's."""
    out = {}
    for image in source.coco["images"]:
        width, height = image.get("width"), image.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            size = read_image_size(source.files[image["id"]])
            if size is None:
                raise DataError(
                    f"image '{source.files[image['id']]}' (id {image['id']}) cannot be read for its size, and "
                    f"'{source.path}' does not give it; fix or remove the image"
                )
            width, height = size
        out[int(image["id"])] = (int(width), int(height))
    return out


def _output_names(source: Source) -> dict[int, str]:
    """Image id -> a unique relative output path (the source's file name where it is safe)."""
    names: dict[int, str] = {}
    taken: set[str] = set()
    for image in source.coco["images"]:
        image_id = int(image["id"])
        rel = PurePosixPath(str(image.get("file_name") or source.files[image_id].name).replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            rel = PurePosixPath(source.files[image_id].name)
        name = str(rel)
        if name.lower() in taken:
            name = str(rel.with_name(f"{rel.stem}_{image_id}{rel.suffix}"))
        taken.add(name.lower())
        names[image_id] = name
    return names


def _prepare(folders: list[Path], files: list[Path], source: Source, *, overwrite: bool) -> None:
    """Make way for a split's output: refuse to replace it unless ``overwrite``, never the source's own files."""
    existing = [f for f in folders if f.is_dir() and any(f.iterdir())] + [f for f in files if f.exists()]
    if not existing:
        return
    if not overwrite:
        raise DataError(
            f"'{existing[0]}' already exists (an earlier conversion?); pass --overwrite to replace this split, "
            "or convert into another folder"
        )
    sources = [p.resolve() for p in source.files.values()]
    for folder in folders:
        real = folder.resolve()
        if any(s == real or real in s.parents for s in sources):
            raise DataError(f"'{folder}' holds the source images; convert into another folder")
    for folder in folders:
        if folder.is_dir():
            shutil.rmtree(folder)
    for file in files:
        file.unlink(missing_ok=True)


def _place_image(src: Path, dst: Path, *, copy: bool) -> bool:
    """Link (or copy) ``src`` to ``dst`` atomically; returns whether it was copied."""
    if not src.is_file():
        raise DataError(f"image '{src}' does not exist; fix the source or remove the image from it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    copied = copy
    if not copy:
        try:
            os.symlink(src.resolve(), tmp)
        except OSError:
            copied = True
    if copied:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return copied


def _place_images(source: Source, names: dict[int, str], folder: Path, *, copy: bool, progress: bool) -> str:
    copied = 0
    items = list(names.items())
    bar = show_progress(items, desc=f"images -> {folder}", unit="img", enabled=progress, leave=False)
    for image_id, name in bar:
        copied += _place_image(source.files[image_id], folder / name, copy=copy)
    if copied and not copy:
        warnings.warn(
            f"could not link images into '{folder}' (no symbolic links here?); copied {copied} of them",
            stacklevel=3,
        )
    return "copied" if copy or copied else "linked"


# ----------------------------------------------------------------------------- YOLO


def _yolo_lines(
    anns: list[dict[str, Any]], label_of: dict[int, int], size: tuple[int, int], report: ConvertReport
) -> list[str]:
    """The label lines of one image's annotations (see the module docstring)."""
    width, height = size
    lines = []
    for ann in anns:
        if ann.get("iscrowd"):
            report.num_crowd_dropped += 1
            continue
        k = label_of[int(ann["category_id"])]
        parts = _polygons(ann.get("segmentation"))
        if parts:
            points = np.asarray(merge_polygons(parts)).reshape(-1, 2) / (width, height)
            xs, ys = points[:, 0].clip(0, 1), points[:, 1].clip(0, 1)
            if xs.max() > xs.min() and ys.max() > ys.min():
                lines.append(f"{k} {_fmt(np.stack([xs, ys], 1).reshape(-1))}")
                report.num_polygons += 1
                continue
        if isinstance(ann.get("segmentation"), dict):
            report.num_rle_as_boxes += 1
        x, y, w, h = (float(v) for v in ann["bbox"])
        x0, x1 = min(max(x, 0.0), width), min(max(x + w, 0.0), width)
        y0, y1 = min(max(y, 0.0), height), min(max(y + h, 0.0), height)
        if x1 <= x0 or y1 <= y0:
            report.num_empty_dropped += 1
            continue
        box = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)
        lines.append(f"{k} {_fmt(box)}")
    report.num_objects += len(lines)
    return lines


def yaml_split_key(split: str) -> str:
    """The ``data.yaml`` key (``train``, ``val``, ``test``) of a split folder's name: ``val2017`` -> ``val``.

    Raises:
        DataError: the name starts with none of them.
    """
    for key, prefixes in (("train", ("train",)), ("val", ("val",)), ("test", ("test",))):
        if split.lower().startswith(prefixes):
            return key
    raise DataError(
        f"cannot tell whether split {split!r} is for training, validation or testing (a data.yaml key "
        "train, val or test): name it train..., val... or test... with --split"
    )


def _update_data_yaml(file: Path, split: str, class_names: list[str]) -> None:
    """Write ``data.yaml`` with ``<key>: images/<split>``, keeping the other splits of an existing one."""
    entries: dict[str, Any] = {}
    if file.is_file():
        old = read_data_yaml(file)
        old_names = parse_names(old.get("names"), f"'{file}'") if "names" in old else class_names
        if old_names != class_names:
            raise DataError(
                f"'{file}' names the classes {old_names}, this source {class_names}; a YOLO dataset has one list "
                "of classes: convert into another folder"
            )
        entries = {k: v for k, v in old.items() if k not in ("names", "nc")}
    key, folder = yaml_split_key(split), f"images/{split}"
    if entries.get(key) not in (None, folder):
        warnings.warn(f"'{file}': {key} was {entries[key]!r}, now {folder!r}", stacklevel=3)
    entries[key] = folder
    ordered = {k: entries[k] for k in SPLIT_KEYS if k in entries}
    ordered.update({k: v for k, v in entries.items() if k not in ordered})
    ordered["nc"] = len(class_names)
    ordered["names"] = dict(enumerate(class_names))
    header = "# YOLO dataset written by `detkit data convert`; paths relative to this file\n"
    write_text(file, header + yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True))


def write_yolo(source: Source, out: str | Path, *, copy_images: bool = False, overwrite: bool = False,
               progress: bool = True) -> ConvertReport:
    """Write ``source`` as split ``source.split`` of the YOLO dataset ``out`` (see the module docstring)."""
    out = Path(out)
    split = source.split
    yaml_split_key(split)  # before any work
    images_dir, labels_dir = out / "images" / split, out / "labels" / split
    report = ConvertReport(source=source.format, target="yolo", split=split, images_dir=images_dir,
                           written=out / "data.yaml")
    _prepare([images_dir, labels_dir], [], source, overwrite=overwrite)
    sizes, names = _sizes(source), _output_names(source)
    label_of = {cid: k for k, cid in enumerate(source.category_ids)}
    per_image: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in source.coco["images"]}
    for ann in source.coco.get("annotations", []):
        per_image[int(ann["image_id"])].append(ann)
    bar = show_progress(per_image.items(), desc=f"labels -> {labels_dir}", unit="img", total=len(per_image),
                        enabled=progress, leave=False)
    for image_id, anns in bar:
        lines = _yolo_lines(anns, label_of, sizes[image_id], report)
        write_text(label_path(images_dir / names[image_id]), "".join(f"{line}\n" for line in lines))
    report.num_images = len(per_image)
    report.images_mode = _place_images(source, names, images_dir, copy=copy_images, progress=progress)
    _update_data_yaml(out / "data.yaml", split, source.class_names)
    if report.num_crowd_dropped:
        warnings.warn(
            f"{source.path}: dropped {report.num_crowd_dropped} crowd region(s) (iscrowd=1): YOLO labels have no "
            "crowd or ignore flag",
            stacklevel=2,
        )
    if report.num_rle_as_boxes:
        warnings.warn(
            f"{source.path}: {report.num_rle_as_boxes} object(s) have RLE masks, which YOLO polygons cannot hold; "
            "they were written as boxes",
            stacklevel=2,
        )
    return report


# ----------------------------------------------------------------------------- COCO


def write_coco(source: Source, out: str | Path, *, copy_images: bool = False, overwrite: bool = False,
               progress: bool = True) -> ConvertReport:
    """Write ``source`` as ``out/annotations/instances_<split>.json`` with its images in ``out/<split>``."""
    out = Path(out)
    split = source.split
    images_dir, ann_file = out / split, out / "annotations" / f"instances_{split}.json"
    report = ConvertReport(source=source.format, target="coco", split=split, images_dir=images_dir,
                           written=ann_file)
    _prepare([images_dir], [ann_file], source, overwrite=overwrite)
    sizes, names = _sizes(source), _output_names(source)
    images = [
        {"id": int(im["id"]), "file_name": names[int(im["id"])], "width": sizes[int(im["id"])][0],
         "height": sizes[int(im["id"])][1]}
        for im in source.coco["images"]
    ]
    keys = ("id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation")
    annotations = []
    for n, ann in enumerate(source.coco.get("annotations", [])):
        record = {k: ann[k] for k in keys if k in ann}
        record.setdefault("id", n + 1)
        annotations.append(record)
        report.num_objects += 1
        report.num_polygons += bool(_polygons(ann.get("segmentation")))
    categories = source.coco.get("categories") or [
        {"id": i, "name": n} for i, n in zip(source.category_ids, source.class_names)
    ]
    report.num_images = len(images)
    report.images_mode = _place_images(source, names, images_dir, copy=copy_images, progress=progress)
    info = {"description": f"converted by detkit data convert from {source.format} '{source.path}'"}
    write_json(ann_file, {"info": info, "images": images, "annotations": annotations, "categories": categories},
               indent=None)
    return report


def convert(
    source_format: str,
    target_format: str,
    src: str | Path,
    out: str | Path,
    *,
    images: str | Path | None = None,
    split: str | None = None,
    copy_images: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> list[ConvertReport]:
    """Convert ``src`` (``source_format``) into ``out`` (``target_format``), one report per split.

    A YOLO source without ``split`` converts every split its ``data.yaml`` lists;
    any other source converts one split (see :func:`read_source`).

    Raises:
        DataError: an unknown format, a source that cannot be read, an output that
            exists (without ``overwrite``).
    """
    if source_format not in SOURCE_FORMATS:
        raise DataError(f"unknown source format {source_format!r}; one of: {', '.join(SOURCE_FORMATS)}")
    if target_format not in TARGET_FORMATS:
        raise DataError(f"unknown target format {target_format!r}; one of: {', '.join(TARGET_FORMATS)}")
    write = write_yolo if target_format == "yolo" else write_coco
    reports = []
    for name in source_splits(source_format, src, split):
        source = read_source(source_format, src, images=images, split=name)
        reports.append(write(source, out, copy_images=copy_images, overwrite=overwrite, progress=progress))
    return reports
