"""Template recognition benchmark: is a picture a user sends one of the catalog's templates?

    .venv/bin/python bench/recognition.py [--unrelated 300] [--seed 0] [--no-cache] [--quick]

Every catalog template's blank image under five distortions a re-shared meme goes through
(JPEG quality 30; half size; 5% of the width and height cut from the left and top; an old
caption, top and bottom, in white Anton with a black outline; turned 3 degrees in place, black
corners) must be recognised as that template. Unrelated pictures (300 by default: the sample
photos and data that scikit-learn and matplotlib ship, crops and tiles of the photos, and
synthetic gradients, shapes, noise, text on colour, screenshots of text and charts in the
templates' own shapes, all from --seed) must be recognised as none. Prints the recognition
rate per distortion and overall, the false recognitions, the distances behind them, the time
per picture, and (unless --quick) a few harder distortions for the record. Prints figures only
(no pass/fail). Targets: recognition >= 95%, false recognitions <= 1%, well under 50 ms per
picture on the 2-core dev machine.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from bot.fonts import anton_font
from bot.recognize import MATCH_DISTANCE, Fingerprint, Recognition, TemplateRecognizer
from common.catalog import Catalog, load_catalog
from common.config import load_config

# --- distortions -----------------------------------------------------------------------------

# Old captions, as a re-shared meme would carry them: top and bottom lines of classic memes.
OLD_CAPTIONS = (
    ("when the code works", "on the first try"),
    ("one does not simply", "deploy on friday"),
    ("me explaining", "why the build is red"),
    ("nobody:", "absolutely nobody:"),
    ("i'm not saying it was aliens", "but it was aliens"),
    ("that feeling when", "the tests pass"),
)


def jpeg_30(image: Image.Image) -> Image.Image:
    """Re-encoded as a chat app's cheapest JPEG."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=30)
    return Image.open(io.BytesIO(buffer.getvalue()))


def half_size(image: Image.Image) -> Image.Image:
    return image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.LANCZOS)


def crop_corner(image: Image.Image, fraction: float = 0.05) -> Image.Image:
    """fraction of the width and of the height cut off, all from the left and the top (a
    screenshot taken a little off), which moves the picture more than the same cut split
    between opposite sides."""
    dx, dy = round(image.width * fraction), round(image.height * fraction)
    return image.crop((dx, dy, image.width, image.height))


def rotate_3(image: Image.Image) -> Image.Image:
    """Turned 3 degrees counter-clockwise, same size, the corners filled black (a photo of a
    screen, a scan)."""
    return image.convert("RGB").rotate(3, resample=Image.Resampling.BICUBIC, fillcolor=(0, 0, 0))


def draw_caption(image: Image.Image, top: str, bottom: str) -> Image.Image:
    """Top and bottom text in white Anton with a black outline: the classic meme caption."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    for text, at_top in ((top.upper(), True), (bottom.upper(), False)):
        size = max(10, out.height // 8)
        font = ImageFont.truetype(str(anton_font().path), size)
        while size > 10 and draw.textlength(text, font=font) > out.width * 0.94:
            size = int(size * 0.9)
            font = ImageFont.truetype(str(anton_font().path), size)
        margin = out.height * 0.02
        y = margin if at_top else out.height - margin - size * 1.2
        draw.text(
            (out.width / 2, y),
            text,
            font=font,
            fill="white",
            stroke_width=max(1, size // 15),
            stroke_fill="black",
            anchor="ma",
        )
    return out


def old_caption(image: Image.Image, index: int = 0) -> Image.Image:
    top, bottom = OLD_CAPTIONS[index % len(OLD_CAPTIONS)]
    return draw_caption(image, top, bottom)


DISTORTIONS: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    "jpeg q30": lambda image, i: jpeg_30(image),
    "half size": lambda image, i: half_size(image),
    "5% crop": lambda image, i: crop_corner(image, 0.05),
    "old caption": old_caption,
    "rotate 3°": lambda image, i: rotate_3(image),
}


def crop_sides(image: Image.Image, fraction: float) -> Image.Image:
    """fraction of the width and of the height cut off, split evenly between opposite sides."""
    dx, dy = round(image.width * fraction / 2), round(image.height * fraction / 2)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


# Beyond the five, for the record (not in the overall rate): where recognition gives out.
MORE_DISTORTIONS: dict[str, Callable[[Image.Image, int], Image.Image]] = {
    "caption+jpeg+half": lambda image, i: half_size(jpeg_30(old_caption(image, i))),
    "5% crop, sides": lambda image, i: crop_sides(image, 0.05),
    "10% crop": lambda image, i: crop_corner(image, 0.10),
    "rotate 5°": lambda image, i: image.convert("RGB").rotate(5, resample=Image.Resampling.BICUBIC),
}


# --- unrelated pictures ----------------------------------------------------------------------


def sample_data(name: str) -> Path:
    from matplotlib import cbook

    return Path(cbook.get_sample_data(name, asfileobj=False))


def sample_photos() -> dict[str, Image.Image]:
    """The photos and pictures that installed packages ship: scikit-learn's two sample photos,
    matplotlib's Grace Hopper portrait, logo and pack shot."""
    from sklearn.datasets import load_sample_images

    photos = {}
    sklearn_images = load_sample_images()
    for name, array in zip(sklearn_images.filenames, sklearn_images.images, strict=True):
        photos[Path(name).stem] = Image.fromarray(array)
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        with Image.open(sample_data(name)) as image:
            photos[Path(name).stem] = image.convert("RGB")
    return photos


def sample_arrays() -> dict[str, np.ndarray]:
    """Matplotlib's sample data that are pictures once coloured: terrain, bathymetry, an MRI
    slice, a membrane potential trace stacked into rows."""
    arrays = {}
    with np.load(sample_data("jacksboro_fault_dem.npz")) as dem:
        arrays["jacksboro"] = dem["elevation"].astype(np.float64)
    with np.load(sample_data("topobathy.npz")) as topo:
        arrays["topobathy"] = topo["topo"].astype(np.float64)
    mri = gzip.decompress(sample_data("s1045.ima.gz").read_bytes())
    arrays["mri"] = np.frombuffer(mri, np.dtype(">u2")).reshape(256, 256).astype(np.float64)
    membrane = np.frombuffer(sample_data("membrane.dat").read_bytes(), np.float32).astype(np.float64)
    arrays["membrane"] = np.tile(membrane[:512], (64, 1)) + np.linspace(0, 1, 64)[:, None]
    return arrays


def colormapped(array: np.ndarray, cmap: str, size: tuple[int, int]) -> Image.Image:
    from matplotlib import colormaps

    lo, hi = np.nanpercentile(array, (1, 99))
    scaled = np.clip((np.nan_to_num(array, nan=lo) - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = (colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)
    return Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC)


def random_size(rng: random.Random, aspects: Sequence[float]) -> tuple[int, int]:
    """240 to 900 px on the long side, in one of the given shapes (width / height)."""
    aspect = rng.choice(aspects)
    long_side = rng.randint(240, 900)
    if aspect >= 1:
        return long_side, max(32, round(long_side / aspect))
    return max(32, round(long_side * aspect)), long_side


def random_colour(rng: random.Random) -> tuple[int, int, int]:
    return rng.randrange(256), rng.randrange(256), rng.randrange(256)


def gradient(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    w, h = size
    a, b = np.array(random_colour(rng), float), np.array(random_colour(rng), float)
    y, x = np.mgrid[0:h, 0:w]
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        t = x / w * np.cos(angle) + y / h * np.sin(angle)
    else:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        t = np.hypot(x - cx, y - cy)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-9)
    return Image.fromarray((a + (b - a) * t[..., None]).astype(np.uint8))


def shapes(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, random_colour(rng))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 12)):
        x0, y0 = rng.uniform(-0.2, 1) * image.width, rng.uniform(-0.2, 1) * image.height
        x1, y1 = x0 + rng.uniform(0.05, 0.8) * image.width, y0 + rng.uniform(0.05, 0.8) * image.height
        kind = rng.choice(("rectangle", "ellipse", "polygon", "line"))
        if kind == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=random_colour(rng))
        elif kind == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=random_colour(rng))
        elif kind == "polygon":
            draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=random_colour(rng))
        else:
            draw.line((x0, y0, x1, y1), fill=random_colour(rng), width=rng.randint(2, 30))
    return image


def noise(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    w, h = size
    generator = np.random.default_rng(rng.randrange(2**32))
    kind = rng.choice(("uniform", "gaussian", "blurred", "blocks"))
    if kind == "blocks":
        small = generator.integers(0, 256, (rng.randint(2, 24), rng.randint(2, 24), 3), dtype=np.uint8)
        return Image.fromarray(small).resize((w, h), Image.Resampling.NEAREST)
    if kind == "gaussian":
        pixels = np.clip(generator.normal(128, 50, (h, w, 3)), 0, 255).astype(np.uint8)
    else:
        pixels = generator.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(2, 20))) if kind == "blurred" else image


WORDS = "the quick brown fox jumps over lazy dog meme bot caption friday deploy build test".split()


def text_on_colour(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Words on a plain background: a screenshot of a message, a sign, a meme without a picture."""
    image = Image.new("RGB", size, random_colour(rng))
    draw = ImageDraw.Draw(image)
    font_file = str(anton_font().path)
    for _ in range(rng.randint(1, 6)):
        size = rng.randint(16, max(17, image.height // 5))
        text = " ".join(rng.choices(WORDS, k=rng.randint(1, 5)))
        if rng.random() < 0.5:
            text = text.upper()
        at = (rng.uniform(0, 0.6) * image.width, rng.uniform(0, 0.85) * image.height)
        outline = rng.random() < 0.5
        draw.text(
            at,
            text,
            font=ImageFont.truetype(font_file, size),
            fill=random_colour(rng),
            stroke_width=max(1, size // 15) if outline else 0,
            stroke_fill="black",
        )
    return image


def screenshot(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """Dark lines of text on white or light grey, an avatar circle at the top: a screenshot of a
    post or a chat, the near-blank picture closest to the catalog's near-blank templates."""
    shade = rng.randint(225, 255)
    image = Image.new("RGB", size, (shade, shade, shade))
    draw = ImageDraw.Draw(image)
    em = rng.randint(14, max(15, image.height // 14))
    font = ImageFont.load_default(em)
    x = rng.randint(8, max(9, image.width // 10))
    y = rng.randint(8, max(9, image.height // 8))
    if rng.random() < 0.6:
        draw.ellipse((x, y, x + 2 * em, y + 2 * em), fill=random_colour(rng))
        draw.text((x + 3 * em, y + em // 2), " ".join(rng.choices(WORDS, k=2)), font=font, fill="black")
        y += 3 * em
    for _ in range(rng.randint(1, 8)):
        if y > image.height - em:
            break
        text = " ".join(rng.choices(WORDS, k=rng.randint(2, 9)))
        draw.text((x, y), text, font=font, fill=(rng.randint(0, 60),) * 3)
        y += int(em * rng.uniform(1.3, 2.0))
    return image


def chart(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A matplotlib chart: line, bar, scatter or image plot, rendered off-screen."""
    from matplotlib.figure import Figure

    w, h = size
    figure = Figure(figsize=(w / 100, h / 100), dpi=100)
    axes = figure.add_subplot()
    generator = np.random.default_rng(rng.randrange(2**32))
    kind = rng.choice(("line", "bar", "scatter", "image"))
    if kind == "line":
        for _ in range(rng.randint(1, 4)):
            axes.plot(np.cumsum(generator.normal(size=100)))
    elif kind == "bar":
        axes.bar(range(8), generator.random(8))
    elif kind == "scatter":
        axes.scatter(generator.normal(size=200), generator.normal(size=200), c=generator.random(200))
    else:
        axes.imshow(generator.random((12, 12)), cmap=rng.choice(("viridis", "magma", "coolwarm")))
    axes.set_title(" ".join(rng.choices(WORDS, k=3)))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Image.open(buffer).convert("RGB")


def photo_crop(rng: random.Random, photos: list[Image.Image]) -> Image.Image:
    """A random crop of a sample photo, sometimes flipped or tiled with another."""
    photo = rng.choice(photos)
    w = rng.randint(photo.width // 4, photo.width)
    h = rng.randint(photo.height // 4, photo.height)
    x, y = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
    crop = photo.crop((x, y, x + w, y + h))
    if rng.random() < 0.3:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.3:  # a tile of two photos side by side
        other = rng.choice(photos).resize(crop.size)
        tiled = Image.new("RGB", (crop.width * 2, crop.height))
        tiled.paste(crop, (0, 0))
        tiled.paste(other, (crop.width, 0))
        crop = tiled
    return crop


def unrelated_images(
    n: int, seed: int = 0, aspects: Sequence[float] = (4 / 3, 1.0, 3 / 4)
) -> Iterator[tuple[str, Image.Image]]:
    """n pictures that are none of the templates, the same ones for the same seed: the sample
    photos and data whole, then crops and tiles of the photos and synthetic pictures in turn.
    The data and synthetic pictures take one of `aspects` (width / height) for their shape: pass
    the catalog's, and a picture's shape alone never tells it from a template."""
    rng = random.Random(seed)
    photos = sample_photos()
    made = 0
    for name, photo in photos.items():
        if made < n:
            made += 1
            yield f"sample photo ({name})", photo
    for name, array in sample_arrays().items():
        for cmap in ("gray", "viridis", "terrain"):
            if made < n:
                made += 1
                yield f"sample data ({name}, {cmap})", colormapped(array, cmap, random_size(rng, aspects))
    makers: list[tuple[str, Callable[[random.Random, tuple[int, int]], Image.Image]]] = [
        ("photo crop", lambda r, size: photo_crop(r, list(photos.values()))),
        ("gradient", gradient),
        ("shapes", shapes),
        ("noise", noise),
        ("text on colour", text_on_colour),
        ("screenshot", screenshot),
        ("chart", chart),
    ]
    while made < n:
        kind, make = makers[made % len(makers)]
        made += 1
        yield kind, make(rng, random_size(rng, aspects))


# --- the run ---------------------------------------------------------------------------------


def timed(recognizer: TemplateRecognizer, image: Image.Image, times: list[float]) -> Recognition | None:
    start = time.perf_counter()
    found = recognizer.recognize(image)
    times.append(time.perf_counter() - start)
    return found


@dataclass
class Rates:
    """Per distortion: recognised as the right template, and pictures tried."""

    right: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)  # "<template> (<distortion>): <what it got>"
    distances: list[float] = field(default_factory=list)  # to the right template, thresholds aside

    def print(self, names: Iterable[str], overall: bool) -> None:
        for name in names:
            right, total = self.right[name], self.total[name]
            print(f"  {name:>17}  {right:>3}/{total}  {100 * right / total:5.1f}%")
        if overall:
            right, total = sum(self.right.values()), sum(self.total.values())
            print(f"  {'overall':>17}  {right:>3}/{total}  {100 * right / total:5.1f}%")


def recognition_rates(
    recognizer: TemplateRecognizer,
    catalog: Catalog,
    images_dir: Path,
    distortions: dict[str, Callable[[Image.Image, int], Image.Image]],
    times: list[float],
) -> Rates:
    rates = Rates()
    for i, template in enumerate(catalog.templates):
        with Image.open(catalog.image_path(template, images_dir)) as blank:
            blank.load()
        for name, distort in distortions.items():
            picture = distort(blank, i)
            found = timed(recognizer, picture, times)
            hit = found is not None and found.template.slug == template.slug
            rates.right[name] = rates.right.get(name, 0) + hit
            rates.total[name] = rates.total.get(name, 0) + 1
            distances = recognizer.distances(Fingerprint.of(picture))
            rates.distances.append(float(distances[recognizer.templates.index(template)]))
            if not hit:
                got = f"{found.template.slug} at {found.distance:.3f}" if found else "nothing"
                rates.misses.append(f"{template.slug} ({name}): {got}")
    return rates


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def max_side(catalog: Catalog) -> int:
    return max(max(t.width, t.height) for t in catalog.templates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (default: ./config.toml or built-in defaults)")
    parser.add_argument("--unrelated", type=int, default=300, help="unrelated pictures (at least 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pictures")
    parser.add_argument("--no-cache", action="store_true", help="build the index without the cache")
    parser.add_argument("--quick", action="store_true", help="leave out the distortions beyond the five")
    args = parser.parse_args()

    config = load_config(args.config)
    catalog = load_catalog(config.catalog_path)
    images_dir = config.template_images_dir
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        TemplateRecognizer.build(catalog, images_dir, cache_dir=Path(scratch))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        TemplateRecognizer.build(catalog, images_dir, cache_dir=Path(scratch))
        warm = time.perf_counter() - start
    recognizer = TemplateRecognizer.build(
        catalog, images_dir, cache_dir=None if args.no_cache else config.cache_dir
    )
    print(
        f"index of {len(catalog.templates)} templates: built in {cold * 1e3:.0f} ms, "
        f"read from the cache in {warm * 1e3:.0f} ms"
    )

    times: list[float] = []
    rates = recognition_rates(recognizer, catalog, images_dir, DISTORTIONS, times)
    print(f"\nrecognised as the right template ({len(catalog.templates)} templates):")
    rates.print(DISTORTIONS, overall=True)
    for miss in rates.misses:
        print(f"    missed: {miss}")
    print(
        f"  distance to the right template: median {statistics.median(rates.distances):.3f}, "
        f"99th percentile {percentile(rates.distances, 0.99):.3f}, max {max(rates.distances):.3f} "
        f"(recognised below {MATCH_DISTANCE})"
    )

    false: list[str] = []
    kinds: Counter[str] = Counter()
    nearest: list[float] = []
    aspects = [t.width / t.height for t in catalog.templates]
    for kind, image in unrelated_images(args.unrelated, args.seed, aspects):
        kinds[kind.split(" (")[0]] += 1
        found = timed(recognizer, image, times)
        nearest.append(float(recognizer.distances(Fingerprint.of(image)).min()))
        if found is not None:
            false.append(
                f"{kind} ({image.width}x{image.height}) -> {found.template.slug} at {found.distance:.3f}"
            )
    unrelated = kinds.total()
    print(
        f"\nfalse recognitions: {len(false)}/{unrelated} unrelated pictures ({100 * len(false) / unrelated:.1f}%)\n"
        f"  ({', '.join(f'{n} {kind}' for kind, n in kinds.items())}; seed {args.seed})"
    )
    for line in false:
        print(f"    {line}")
    print(
        f"  nearest template, any shape: min {min(nearest):.3f}, 1st percentile {percentile(nearest, 0.01):.3f}"
    )

    ms = [t * 1e3 for t in times]
    print(
        f"\ntime per picture ({len(ms)} pictures as decoded, up to {max_side(catalog)} px): "
        f"median {statistics.median(ms):.1f} ms, p95 {percentile(ms, 0.95):.1f} ms, max {max(ms):.1f} ms"
    )

    if not args.quick:
        more = recognition_rates(recognizer, catalog, images_dir, MORE_DISTORTIONS, [])
        print("\nbeyond the benchmark (not in the overall rate):")
        more.print(MORE_DISTORTIONS, overall=False)


if __name__ == "__main__":
    main()
