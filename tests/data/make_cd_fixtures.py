#!/usr/bin/env python3
"""Tiny change-detection datasets in the exact layouts of the real releases, with their quirks.

One maker per layout, each writing a few pairs of about 24 x 20 px:

``make_folder``
    A / B / label folders, with split folders or one folder of pairs, optional ``list/*.txt`` (CRLF,
    no final newline, names with or without extension), JPEG labels (CDD), 0/1 labels, another label
    folder name, ``changescope.json``; ``make_egy`` wraps it as EGY-BCD's ``NCC samples`` folder.
``make_sztaki``
    SZTAKI AirChange: 13 pairs, mixed-case extensions (``im2.BMP``, ``gt.BMP``, ``im1.BMP``), a palette
    gt, stray gt values, the larger ``Archieve`` pair.
``make_oscd_train`` / ``make_oscd_test``
    OSCD train cities (RGBA ``cm.png`` and the {1, 2} ``<city>-cm.tif``, an Images city without labels)
    and the SiamCRNN test layout (``cm.png`` mode L), both with ``dates.txt``.
``make_xbd``
    DAHiTra's xBD / Ida-BD: ``*_pre_disaster`` / ``*_post_disaster`` images and masks, damage 0..4.
``make_landsat``
    Taizhou / Nanjing: 6-band ENVI BSQ uint8 rasters with ``.HDR`` / ``.hdr`` headers, dark values,
    sparse change.bmp / unchanged.bmp.
``make_sar_classic`` / ``make_inlpg``
    ``<name>_{1,2,gt}`` triplets: 24-bit grey BMPs, L BMPs, palette gts, zips next to ``_unzipped``
    folders, lossy JPEG gts (Beijing), gt value 34 strays (yellow_C), grey-vs-colour pairs.

What each fixture holds is in the ``*_PAIRS`` tables (split -> [(id, changed)]) and ``expected_mask``.
Run the module to look at the files::

    python tests/data/make_cd_fixtures.py OUT

Nothing here imports changescope: a fixture must not be shaped by the code it tests.
"""

from __future__ import annotations

import json
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 24, 20  # most fixture images are 24 wide and 20 high (never square, so a swapped axis shows)
IGNORE = 255


# --------------------------------------------------------------------------------------------------
# small writers
# --------------------------------------------------------------------------------------------------
def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


def texture(*key: object, shape: tuple[int, int] = (H, W), bands: int = 3, low=0, high=256) -> np.ndarray:
    """A reproducible random image ``[H, W, bands]`` (``[H, W]`` for one band)."""
    array = _rng("texture", *key).integers(low, high, (*shape, bands), dtype=np.uint8)
    return array[:, :, 0] if bands == 1 else array


def truth(key: str, changed: bool = True, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """The 0/1 change mask of a pair: a rectangle placed by ``key``, all 0 for an unchanged pair."""
    mask = np.zeros(shape, np.uint8)
    if changed:
        height, width = shape
        rng = _rng("mask", key)
        top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
        mask[top : top + height // 3 + 1, left : left + width // 3 + 1] = 1
    return mask


def _save(path: Path, array: np.ndarray, mode: str | None = None, **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path, **params)
    return path


def _save_palette(path: Path, values: np.ndarray) -> Path:
    """A palette (P) image: index 0 black, 255 white, the rest colours (so it reads back as P, not L)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.frombytes("P", (values.shape[1], values.shape[0]), np.ascontiguousarray(values).tobytes())
    palette = [(i, 64, 255 - i) for i in range(256)]
    palette[0], palette[255] = (0, 0, 0), (255, 255, 255)
    image.putpalette([v for rgb in palette for v in rgb])
    image.save(path)
    return path


def _grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


# --------------------------------------------------------------------------------------------------
# folder: LEVIR-CD / EGY-BCD / CDD style
# --------------------------------------------------------------------------------------------------
FOLDER_PAIRS: dict[str, list[tuple[str, bool]]] = {
    "train": [("train_1", True), ("train_2", False), ("train_3", True)],
    "val": [("val_1", True), ("val_2", False)],
    "test": [("test_1", True)],
}
#: on disk in the flat layout, but in no list: a reader must leave it out
FOLDER_UNLISTED = "spare_9"


def make_folder(
    root: str | Path,
    layout: str = "split",
    lists: bool = False,
    label_dir: str = "label",
    coding: str = "0-255",
    image_ext: str = ".png",
    label_ext: str = ".png",
    config: dict | None = None,
    dirs: tuple[str, str] = ("A", "B"),
) -> Path:
    """A / B / label pairs; ``layout`` "split" (ROOT/<split>/A...) or "flat" (ROOT/A..., lists decide).

    ``coding`` "0-255" or "0-1" is how the label stores change; ``.jpg`` labels are lossy (CDD).
    Lists are written EGY-BCD style: CRLF and no final newline; the val list omits extensions.
    """
    root = Path(root)
    pairs = [(split, pair_id, changed) for split, items in FOLDER_PAIRS.items() for pair_id, changed in items]
    if layout == "flat" and lists:
        pairs.append(("train", FOLDER_UNLISTED, True))
    for split, pair_id, changed in pairs:
        base = root / split if layout == "split" else root
        _save(base / dirs[0] / f"{pair_id}{image_ext}", texture(pair_id, "A"))
        _save(base / dirs[1] / f"{pair_id}{image_ext}", texture(pair_id, "B"))
        scale = 255 if coding == "0-255" else 1
        _save(base / label_dir / f"{pair_id}{label_ext}", truth(pair_id, changed) * np.uint8(scale))
    if lists:
        for split, items in FOLDER_PAIRS.items():
            names = [pair_id if split == "val" else f"{pair_id}{image_ext}" for pair_id, _ in items]
            path = root / "list" / f"{split}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes("\r\n".join(names).encode())
    if config is not None:
        (root / "changescope.json").write_text(json.dumps(config), encoding="utf-8")
    return root


def folder_id(layout: str, split: str, pair_id: str) -> str:
    return f"{split}/{pair_id}" if layout == "split" else pair_id


EGY_DIR = "NCC samples"


def make_egy(root: str | Path) -> Path:
    """EGY-BCD's official sample folder: ROOT/NCC samples/{train,val,test}/{A,B,label} + list/*.txt."""
    root = Path(root)
    make_folder(root / EGY_DIR, layout="split", lists=True)
    (root / "README.EGY-BCD.HEAD.md").write_text("# EGY-BCD\n", encoding="utf-8")
    return root


# --------------------------------------------------------------------------------------------------
# SZTAKI AirChange
# --------------------------------------------------------------------------------------------------
SZTAKI_DIR = "Dataset/SZTAKI_AirChange_Benchmark"
SZTAKI_PAIRS: dict[str, list[tuple[str, bool]]] = {
    "train": [
        ("Szada/2", True),
        ("Szada/3", True),
        ("Szada/4", True),
        ("Szada/5", True),
        ("Szada/6", True),
        ("Tiszadob/1", True),
        ("Tiszadob/2", False),
        ("Tiszadob/4", True),
        ("Archieve", True),
    ],
    "val": [("Szada/7", True), ("Tiszadob/5", True)],
    "test": [("Szada/1", True), ("Tiszadob/3", True)],
}
#: files stored with an upper-case extension, as in the release
SZTAKI_UPPER = {("Szada/5", "im2"), ("Szada/6", "gt"), ("Szada/7", "im1")}
#: stray gt values (row, col, value), as in the release (Szada/6: one 213; Tiszadob/4: eight values)
SZTAKI_STRAYS = {
    "Szada/6": [(19, 23, 213)],
    "Tiszadob/4": [(0, 0, 21), (0, 1, 57), (1, 0, 66), (19, 0, 105), (0, 23, 144), (1, 23, 189), (2, 23, 192)]
    + [(19, 22, 252)],
}
SZTAKI_PALETTE_GT = "Szada/2"
SZTAKI_ARCHIEVE_SHAPE = (22, 26)  # larger than the others, as 1048 x 724 is against 952 x 640


def sztaki_shape(pair_id: str) -> tuple[int, int]:
    return SZTAKI_ARCHIEVE_SHAPE if pair_id == "Archieve" else (H, W)


def make_sztaki(root: str | Path) -> Path:
    """ROOT/Dataset/SZTAKI_AirChange_Benchmark/{Szada/1..7, Tiszadob/1..5, Archieve}/{im1,im2,gt}.bmp."""
    root = Path(root)
    base = root / SZTAKI_DIR
    for items in SZTAKI_PAIRS.values():
        for pair_id, changed in items:
            shape = sztaki_shape(pair_id)

            def name(stem: str, pair_id: str = pair_id) -> Path:
                ext = ".BMP" if (pair_id, stem) in SZTAKI_UPPER else ".bmp"
                return base / pair_id / f"{stem}{ext}"

            _save(name("im1"), texture(pair_id, "im1", shape=shape))
            _save(name("im2"), texture(pair_id, "im2", shape=shape))
            gt = truth(pair_id, changed, shape) * np.uint8(255)
            for row, col, value in SZTAKI_STRAYS.get(pair_id, []):
                gt[row, col] = value
            if pair_id == SZTAKI_PALETTE_GT:
                _save_palette(name("gt"), gt)
            else:
                _save(name("gt"), gt)
    (base / "README.md").write_text("# SZTAKI AirChange Benchmark\n", encoding="utf-8")
    return root


def sztaki_expected(pair_id: str, changed: bool) -> np.ndarray:
    """The 0/1 mask: the drawn change, with each stray value on the side of 127 it lies."""
    mask = truth(pair_id, changed, sztaki_shape(pair_id)).astype(np.int64)
    for row, col, value in SZTAKI_STRAYS.get(pair_id, []):
        mask[row, col] = int(value > 127)
    return mask


# --------------------------------------------------------------------------------------------------
# OSCD
# --------------------------------------------------------------------------------------------------
OSCD_IMAGES = "Onera Satellite Change Detection dataset - Images"
OSCD_LABELS = "Onera Satellite Change Detection dataset - Train Labels"
#: city -> (height, width), changed, dates.txt dates
OSCD_TRAIN_CITIES = {
    "abudhabi": ((H, W), True, ("20160120", "20180328")),
    "beirut": ((H + 4, W + 2), True, ("20150820", "20171003")),
    "pisa": ((H - 2, W), True, ("20150704", "20180211")),
    "saclay_e": ((H, W - 3), False, ("20160315", "20170829")),
}
OSCD_VAL = ("beirut", "pisa")
#: in the Images folder, with no Train Labels (as the full release holds the test cities' images)
OSCD_UNLABELLED_CITY = "brasilia"
OSCD_TEST_HOME = "FCN_version/dataset/OSCD/original_data"
OSCD_TEST_CITIES = {
    "dubai": ((H + 1, W), True, ("20151211", "20180330")),
    "norcia": ((H - 5, W + 5), True, ("20150711", "20171018")),
}


def _oscd_images(folder: Path, city: str, shape: tuple[int, int], dates: tuple[str, str]) -> None:
    _save(folder / "pair" / "img1.png", texture(city, 1, shape=shape))
    _save(folder / "pair" / "img2.png", texture(city, 2, shape=shape))
    (folder / "dates.txt").write_text(f"date_1: {dates[0]}\ndate_2: {dates[1]}\n", encoding="utf-8")
    (folder / f"{city}.geojson").write_text('{"type": "FeatureCollection", "features": []}', encoding="utf-8")


def make_oscd_train(root: str | Path) -> Path:
    """ROOT/Dataset/OSCD/...Images/<city>/{pair,dates.txt} and ...Train Labels/<city>/cm/{cm.png,-cm.tif}."""
    root = Path(root)
    base = root / "Dataset" / "OSCD"
    for city, (shape, changed, dates) in OSCD_TRAIN_CITIES.items():
        _oscd_images(base / OSCD_IMAGES / city, city, shape, dates)
        mask = truth(city, changed, shape)
        rgba = np.zeros((*shape, 4), np.uint8)
        rgba[..., :3] = mask[:, :, None] * 255
        rgba[..., 3] = 255  # (0,0,0,255) / (255,255,255,255), as released
        cm = base / OSCD_LABELS / city / "cm"
        _save(cm / "cm.png", rgba)
        _save(cm / f"{city}-cm.tif", mask + 1)  # {1, 2}: 1 = no change, 2 = change
    _oscd_images(
        base / OSCD_IMAGES / OSCD_UNLABELLED_CITY, OSCD_UNLABELLED_CITY, (H, W), ("20150916", "20171017")
    )
    (base / OSCD_IMAGES / "train.txt").write_text(",".join(OSCD_TRAIN_CITIES), encoding="utf-8")
    (base / OSCD_IMAGES / "test.txt").write_text(OSCD_UNLABELLED_CITY, encoding="utf-8")
    (base / OSCD_IMAGES / "README.txt").write_text(
        "Onera Satellite Change Detection dataset\n", encoding="utf-8"
    )
    (base / OSCD_LABELS / "README.txt").write_text("0 means no change and 1 means change\n", encoding="utf-8")
    return root


def make_oscd_test(root: str | Path) -> Path:
    """ROOT/FCN_version/dataset/OSCD/original_data/testing/<city>/{pair/img1.png, img2.png, cm/cm.png (L)}."""
    root = Path(root)
    home = root / OSCD_TEST_HOME
    for city, (shape, changed, dates) in OSCD_TEST_CITIES.items():
        _oscd_images(home / "testing" / city, city, shape, dates)
        _save(home / "testing" / city / "cm" / "cm.png", truth(city, changed, shape) * np.uint8(255))
    (home / "test.txt").write_text(",".join(OSCD_TEST_CITIES), encoding="utf-8")
    (home / "train.txt").write_text("abudhabi,pisa", encoding="utf-8")
    return root


def oscd_iso(date: str) -> str:
    return f"{date[:4]}-{date[4:6]}-{date[6:]}"


# --------------------------------------------------------------------------------------------------
# xBD / Ida-BD (DAHiTra)
# --------------------------------------------------------------------------------------------------
XBD_SUBSETS = {
    "data/xbd/train": ["hurricane-harvey_00000000", "hurricane-harvey_00000001", "hurricane-harvey_00000002"]
    + ["hurricane-harvey_00000006", "hurricane-harvey_00000007"],
    "data/IdaBD": ["AOI1-tile_1-3", "AOI1-tile_1-4", "AOI1-tile_2-3", "AOI1-tile_2-4"],
}
XBD_PAIRS: dict[str, list[tuple[str, bool]]] = {
    "train": [
        ("hurricane-harvey_00000000", True),
        ("hurricane-harvey_00000001", False),  # buildings, none damaged
        ("hurricane-harvey_00000002", True),
        ("AOI1-tile_1-3", True),
        ("AOI1-tile_1-4", True),
    ],
    "val": [("hurricane-harvey_00000006", True), ("AOI1-tile_2-3", True)],
    "test": [("hurricane-harvey_00000007", True), ("AOI1-tile_2-4", True)],
}


def xbd_damage(name: str, changed: bool) -> np.ndarray:
    """Post-disaster mask: 0 background, 1 no damage, 2 minor, 3 major, 4 destroyed."""
    damage = np.zeros((H, W), np.uint8)
    damage[1:5, 1:7] = 1
    damage[12:18, 2:6] = 1
    if changed:
        rng = _rng("damage", name)
        damage[2:8, 10:16] = int(rng.integers(2, 5))
        damage[14:19, 16:22] = 3
        damage[9:11, 0:4] = 4
    return damage


def make_xbd(root: str | Path) -> Path:
    """ROOT/data/xbd/train/{images,masks}/... and ROOT/data/IdaBD/{images,masks}/..., DAHiTra's names."""
    root = Path(root)
    changed_of = {pair_id: changed for items in XBD_PAIRS.values() for pair_id, changed in items}
    for subset, names in XBD_SUBSETS.items():
        for name in names:
            damage = xbd_damage(name, changed_of[name])
            for when in ("pre", "post"):
                _save(root / subset / "images" / f"{name}_{when}_disaster.png", texture(name, when))
            _save(root / subset / "masks" / f"{name}_pre_disaster.png", (damage > 0).astype(np.uint8) * 255)
            _save(root / subset / "masks" / f"{name}_post_disaster.png", damage)
    return root


# --------------------------------------------------------------------------------------------------
# Landsat Taizhou / Nanjing (ENVI)
# --------------------------------------------------------------------------------------------------
#: scene -> (lines, samples), (date 1 raster, date 2 raster), header extension, sensor
LANDSAT_SCENES = {
    "Taizhou": ((H, W), ("2000TM", "2003TM"), ".HDR", "Landsat ETM"),
    "Nanjing": (
        (H + 6, W + 4),
        ("LT51200382000124BJC00_Nanjing", "LT51200382002193BJC00_Nanjing"),
        ".hdr",
        "Landsat TM",
    ),
}
LANDSAT_PAIRS: dict[str, list[tuple[str, bool]]] = {
    "train": [("Nanjing", True)],
    "val": [("Taizhou", True)],
    "test": [],
}
LANDSAT_BANDS = 6

ENVI_HEADER = """ENVI
description = {{
  File Resize Result, x resize factor: 1.000000, y resize factor: 1.000000.
  [Wed Apr 25 09:29:04 2012]}}
samples = {samples}
lines   = {lines}
bands   = {bands}
header offset = {offset}
file type = ENVI Standard
data type = {data_type}
interleave = {interleave}
sensor type = {sensor}
byte order = 0
map info = {{UTM, 1.000, 1.000, 203325.000, 3604935.000, 3.0e+001, 3.0e+001, 51, North, WGS-84}}
wavelength units = Micrometers
band names = {{
 Resize (Band 1), Resize (Band 2), Resize (Band 3),
 Resize (Band 4), Resize (Band 5), Resize (Band 7)}}
wavelength = {{
 0.482500, 0.565000, 0.660000, 0.825000, 1.650000, 2.220000}}
"""


def landsat_bands(scene: str, date: int) -> np.ndarray:
    """``[6, lines, samples]`` uint8: dark, narrow DN ranges, a different offset per band."""
    shape = LANDSAT_SCENES[scene][0]
    bands = [
        texture(scene, date, band, shape=shape, bands=1, low=40 + 5 * band, high=110 + 3 * band)
        for band in range(6)
    ]
    return np.stack(bands)


def landsat_samples(scene: str) -> tuple[np.ndarray, np.ndarray]:
    """change.bmp and unchanged.bmp (0 / 255): sparse, disjoint reference pixels."""
    shape = LANDSAT_SCENES[scene][0]
    rng = _rng("samples", scene)
    draw = rng.random(shape)
    change = np.where(draw < 0.08, 255, 0).astype(np.uint8)
    unchanged = np.where(draw > 0.7, 255, 0).astype(np.uint8)
    return change, unchanged


def landsat_expected(scene: str) -> np.ndarray:
    change, unchanged = landsat_samples(scene)
    mask = np.full(change.shape, IGNORE, np.int64)
    mask[unchanged == 255] = 0
    mask[change == 255] = 1
    return mask


def write_envi(
    path: Path, cube: np.ndarray, header_ext: str = ".hdr", sensor: str = "Landsat TM", **fields
) -> Path:
    """An ENVI standard BSQ raster (``header offset`` zero bytes first) and its header."""
    count, lines, samples = cube.shape
    values = {"samples": samples, "lines": lines, "bands": count, "offset": 0, "data_type": 1}
    values |= {"interleave": "bsq", "sensor": sensor} | fields
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * int(values["offset"]) + cube.astype(np.uint8).tobytes())
    Path(f"{path}{header_ext}").write_text(ENVI_HEADER.format(**values), encoding="latin-1")
    return path


def make_landsat(root: str | Path) -> Path:
    """ROOT/Dataset/Landsat/{Taizhou,Nanjing}/: two ENVI rasters + headers, change.bmp, unchanged.bmp."""
    root = Path(root)
    base = root / "Dataset" / "Landsat"
    for scene, (_, rasters, header_ext, sensor) in LANDSAT_SCENES.items():
        folder = base / scene
        for date, name in enumerate(rasters, 1):
            write_envi(folder / name, landsat_bands(scene, date), header_ext, sensor)
        change, unchanged = landsat_samples(scene)
        _save(folder / "change.bmp", change)
        _save(folder / "unchanged.bmp", unchanged)
        quicklook = landsat_bands(scene, 1)[[3, 2, 1]].transpose(1, 2, 0)
        _save(folder / f"{scene.lower()}1.jpg", np.ascontiguousarray(quicklook))
    (base / "README.md").write_text("## Citation\n", encoding="utf-8")
    return root


# --------------------------------------------------------------------------------------------------
# triplets: <name>_1, <name>_2, <name>_gt
# --------------------------------------------------------------------------------------------------
#: name -> folder, shape; every pair has change
SAR_CLASSIC = {
    "ottawa": ("SAR_CD_DDNet/Ottawa_dataset_unzipped", (H + 4, W - 2)),
    "Sulzberger1": ("SAR_Change_Detection_CWNN/Sulzberger_data_unzipped", (H, H)),
    "bern": ("SAR_Change_Detection_CWNN/pic", (H + 1, H + 1)),
    "san": ("SAR_Change_Detection_GarborPCANet/pic", (H, W)),
}
INLPG = {
    "Italy": (H + 2, W + 6),
    "beijing_A": (H + 4, W + 4),
    "beijing_B": (H + 4, W + 4),
    "shuguang": (H, W + 8),
    "yellow_C": (H + 8, W - 4),
}
#: gts stored as lossy JPEG: the expected mask is the stored values above 127
LOSSY_GT = ("beijing_A", "beijing_B")
#: yellow_C_gt's faint band of value 34 along the top edge
YELLOW_C_STRAY = 34


def make_sar_classic(root: str | Path) -> Path:
    """Feng Gao's SAR scenes: 24-bit R=G=B BMPs (Ottawa, Bern, Sulzberger), L BMPs (San Francisco),
    palette gts (San Francisco, Sulzberger), and the zips kept next to their ``_unzipped`` folders."""
    root = Path(root)
    for name, (folder, shape) in SAR_CLASSIC.items():
        grey = [texture(name, t, shape=shape, bands=1) for t in (1, 2)]
        gt = truth(name, True, shape) * np.uint8(255)
        for t, image in zip((1, 2), grey, strict=True):
            _save(root / folder / f"{name}_{t}.bmp", image if name == "san" else _grey3(image))
        if name in ("san", "Sulzberger1"):
            _save_palette(root / folder / f"{name}_gt.bmp", gt)
        else:
            _save(root / folder / f"{name}_gt.bmp", _grey3(gt))
    for folder, zip_name in (
        ("SAR_CD_DDNet/Ottawa_dataset_unzipped", "SAR_CD_DDNet/Ottawa_dataset.zip"),
        (
            "SAR_Change_Detection_CWNN/Sulzberger_data_unzipped",
            "SAR_Change_Detection_CWNN/Sulzberger_data.zip",
        ),
    ):
        with zipfile.ZipFile(root / zip_name, "w") as archive:
            for path in sorted((root / folder).iterdir()):
                archive.write(path, path.name)
    for repo in ("SAR_CD_DDNet", "SAR_Change_Detection_CWNN", "SAR_Change_Detection_GarborPCANet"):
        (root / repo / "README.md").write_text(f"# {repo}\n", encoding="utf-8")
    return root


def make_inlpg(root: str | Path) -> Path:
    """yulisun/INLPG ``datasets/``: L SAR BMPs (yellow_C, with gt value 34 strays), JPEG optical pairs
    with lossy JPEG gts (beijing), grey-in-RGB t1 against colour t2 (shuguang, Italy)."""
    root = Path(root)
    folder = root / "datasets"
    for name, shape in INLPG.items():
        gt = truth(name, True, shape) * np.uint8(255)
        if name.startswith("beijing"):
            _save(folder / f"{name}_1.jpg", texture(name, 1, shape=shape), quality=90)
            _save(folder / f"{name}_2.jpg", texture(name, 2, shape=shape), quality=90)
            _save(folder / f"{name}_gt.jpg", gt, quality=75)
            continue
        if name == "yellow_C":
            gt[0, :] = np.where(gt[0, :] == 0, YELLOW_C_STRAY, gt[0, :])
            _save(folder / f"{name}_1.bmp", texture(name, 1, shape=shape, bands=1))
            _save(folder / f"{name}_2.bmp", texture(name, 2, shape=shape, bands=1))
            _save(folder / f"{name}_gt.bmp", gt)
            continue
        _save(folder / f"{name}_1.bmp", _grey3(texture(name, 1, shape=shape, bands=1)))
        _save(folder / f"{name}_2.bmp", texture(name, 2, shape=shape))
        _save(folder / f"{name}_gt.bmp", _grey3(gt) if name == "Italy" else gt)
    (root / "README.INLPG.md").write_text("# INLPG\n", encoding="utf-8")
    return root


def triplet_expected(root: Path, name: str) -> np.ndarray:
    """The 0/1 mask of a triplet fixture (for lossy gts, the stored values above 127)."""
    if name in LOSSY_GT:
        return (np.asarray(Image.open(root / "datasets" / f"{name}_gt.jpg")) > 127).astype(np.int64)
    shape = SAR_CLASSIC[name][1] if name in SAR_CLASSIC else INLPG[name]
    return truth(name, True, shape).astype(np.int64)


# --------------------------------------------------------------------------------------------------
MAKERS = {
    "folder-split": make_folder,
    "folder-flat-lists": lambda root: make_folder(root, layout="flat", lists=True),
    "folder-cdd-jpeg": lambda root: make_folder(root, label_dir="OUT", image_ext=".jpg", label_ext=".jpg"),
    "folder-01": lambda root: make_folder(root, layout="flat", coding="0-1", config={"gsd": 0.5}),
    "egy-bcd": make_egy,
    "sztaki": make_sztaki,
    "oscd-train": make_oscd_train,
    "oscd-test": make_oscd_test,
    "xbd": make_xbd,
    "landsat": make_landsat,
    "sar-classic": make_sar_classic,
    "inlpg": make_inlpg,
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python tests/data/make_cd_fixtures.py OUT", file=sys.stderr)
        return 2
    out = Path(argv[0])
    for name, make in MAKERS.items():
        target = make(out / name)
        files = sum(1 for p in target.rglob("*") if p.is_file())
        print(f"{name:18s} {files:3d} files in {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
