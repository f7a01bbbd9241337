"""The bundled default dataset: rendered scenes whose captions name what is in them.

No image dataset ships with any dependency we have, so `clipforge demo` renders one, offline:
each image holds one shape (4 kinds) of one colour (6) and one size (2) in one quadrant (4) on a
noisy background; 192 distinct scenes, each described by 2 differently-worded captions. It is
learnable by a 7 M-parameter model in minutes on a CPU, and it is written as ordinary raw files
(JPEGs + `captions.csv` + split lists) so that the demo runs the real converter on it.

    out/images/000000.jpg ...
    out/captions.csv          image,caption,shape,color   (2 rows per image)
    out/splits/train.txt      image file names of the training split
    out/splits/val.txt        the held-out split
"""
import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
          "yellow": (235, 215, 40), "purple": (150, 60, 190), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ("small", "large")
PLACES = {"top left": (0.27, 0.27), "top right": (0.73, 0.27), "bottom left": (0.27, 0.73), "bottom right": (0.73, 0.73)}
TEMPLATES = ("a {size} {color} {shape} in the {place}",
             "a photo of a {color} {shape}, {size}, at the {place} of the picture")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float, fill) -> None:
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:  # cross: two bars of a third of the width
        bar = radius / 3
        draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=fill)
        draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=fill)


def render_scene(rng: random.Random, size: int) -> tuple[Image.Image, dict]:
    """One image and the attributes it shows."""
    scene = {"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)),
             "size": rng.choice(SIZES), "place": rng.choice(list(PLACES))}
    # Dark, noisy background so colour is the signal, not the whole image's mean.
    background = tuple(rng.randint(10, 70) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    image = Image.blend(image, Image.effect_noise((size, size), 40).convert("RGB"), 0.25)
    fx, fy = PLACES[scene["place"]]
    jitter = size * 0.05
    radius = size * (0.11 if scene["size"] == "small" else 0.2)
    _draw_shape(ImageDraw.Draw(image), scene["shape"], fx * size + rng.uniform(-jitter, jitter),
                fy * size + rng.uniform(-jitter, jitter), radius, COLORS[scene["color"]])
    return image, scene


def make_synthetic_dataset(out_dir: str, num_train: int = 4000, num_val: int = 500, size: int = 96,
                           seed: int = 0) -> Path:
    """Write the raw dataset (idempotent for the same arguments) and return its captions.csv."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "splits").mkdir(exist_ok=True)
    rng = random.Random(seed)
    rows, names = [], []
    for index in range(num_train + num_val):
        image, scene = render_scene(rng, size)
        name = f"{index:06d}.jpg"
        image.save(out / "images" / name, quality=90)
        names.append(name)
        for template in TEMPLATES:
            rows.append({"image": f"images/{name}", "caption": template.format(**scene),
                         "shape": scene["shape"], "color": scene["color"]})
    with open(out / "captions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption", "shape", "color"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "splits" / "train.txt").write_text("\n".join(names[:num_train]) + "\n")
    (out / "splits" / "val.txt").write_text("\n".join(names[num_train:]) + "\n")
    (out / "classnames.txt").write_text("\n".join(SHAPES) + "\n")
    return out / "captions.csv"
