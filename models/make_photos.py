"""Make the bundled photos ``onnxplain/data/images/*.jpg`` from images that ship inside installed packages.

Run from the repository root (needs scikit-learn, scikit-image and Pillow; nothing is downloaded: every
source file is read by path from the installed package)::

    python models/make_photos.py

Each photo is a centered square of the source (the largest one, or a fraction of it), resized to
224 x 224 (bicubic, Pillow) and saved as RGB JPEG, quality 90 (each < 40 KB).
Sources and licences: ``models/LICENSES.md``.
"""
from __future__ import annotations

import importlib.util
import os

from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "onnxplain", "data", "images")
SIZE = 224
QUALITY = 90

# output name -> (package, file inside the package, crop: side of the square as a fraction of the short side)
SOURCES = {
    "camera.jpg": ("skimage", "data/camera.png", 1.0),       # a photographer with a tripod; CC0 (Lav Varshney)
    "chelsea.jpg": ("skimage", "data/chelsea.png", 1.0),     # a cat; CC0 (Stefan van der Walt)
    "china.jpg": ("sklearn", "datasets/images/china.jpg", 1.0),    # a Chinese palace; CC BY 2.0 (danielbuechele)
    "coffee.jpg": ("skimage", "data/coffee.png", 1.0),       # an espresso cup; CC0 (Rachel Michetti)
    "flower.jpg": ("sklearn", "datasets/images/flower.jpg", 0.7),  # a daisy-like flower; CC BY 2.0 (vultilion)
}
# Left out after trying: skimage's rocket.jpg (EfficientNet-Lite0 says "drilling platform" or "missile"
# depending on the crop and the JPEG encoding) and astronaut.png ("bobsled").


def source_path(package: str, relpath: str) -> str:
    """Path of a file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package!r} is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], relpath)
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: not in the installed {package} (a version without bundled sample data?)")
    return path


def square_224(path: str, frac: float = 1.0) -> Image.Image:
    """Centered square of side ``frac`` x the short side, resized to SIZE x SIZE (bicubic), RGB."""
    img = Image.open(path).convert("RGB")
    side = min(img.size) * frac
    left, top = (img.width - side) / 2, (img.height - side) / 2
    return img.resize((SIZE, SIZE), Image.BICUBIC, box=(left, top, left + side, top + side))


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for old in os.listdir(OUT):
        if old.endswith(".jpg") and old not in SOURCES:
            os.remove(os.path.join(OUT, old))
    for name, (package, relpath, frac) in SOURCES.items():
        out = os.path.join(OUT, name)
        tmp = out + ".tmp"
        square_224(source_path(package, relpath), frac).save(tmp, format="JPEG", quality=QUALITY, optimize=True)
        os.replace(tmp, out)
        size = os.path.getsize(out)
        print(f"{name}: {package}/{relpath} -> {size / 1024:.1f} KB")
        if size >= 40 * 1024:
            raise SystemExit(f"{out} is {size} bytes (limit 40 KB)")


if __name__ == "__main__":
    main()
