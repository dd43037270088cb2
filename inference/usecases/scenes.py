"""The suite's images, drawn with Pillow from a seed, each with the ground truth it shows.

One generator per use case (receipts, a chart, homework, nutrition labels, a dashboard).
The same seed gives the same facts and the same pixels (for one Pillow version); another seed gives
other facts, so a model cannot pass by having seen the answers. Fonts: Pillow's built-in one
(`ImageFont.load_default(size=...)`, Pillow >= 10.1), so no font file is needed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache

from PIL import Image, ImageDraw, ImageFont

CENT = Decimal("0.01")


@cache
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


# --- receipt ------------------------------------------------------------------------------------

RECEIPT_ITEMS = [
    "Bananas", "Whole milk 1L", "Sourdough bread", "Eggs (12)", "Cheddar cheese", "Apples 1kg",
    "Coffee beans", "Orange juice", "Greek yogurt", "Pasta 500g", "Tomatoes", "Olive oil",
]  # fmt: skip


@dataclass(frozen=True)
class Receipt:
    store: str
    items: tuple[tuple[str, Decimal], ...]
    tax_rate: Decimal
    subtotal: Decimal
    tax: Decimal
    total: Decimal


def make_receipt(rng: random.Random) -> Receipt:
    names = rng.sample(RECEIPT_ITEMS, rng.randint(4, 6))
    items = tuple((name, Decimal(rng.randint(99, 899)) / 100) for name in names)
    subtotal = sum((price for _, price in items), Decimal(0))
    rate = Decimal(rng.choice(["0.0625", "0.07", "0.0825", "0.09"]))
    tax = (subtotal * rate).quantize(CENT, rounding=ROUND_HALF_UP)
    store = rng.choice(["CORNER MARKET", "GREEN GROCER", "DAILY FRESH", "MAPLE FOODS"])
    return Receipt(store, items, rate, subtotal, tax, subtotal + tax)


def draw_receipt(receipt: Receipt) -> Image.Image:
    width, line = 520, 40
    height = 300 + line * len(receipt.items) + 160
    image = Image.new("RGB", (width, height), (250, 248, 240))
    draw = ImageDraw.Draw(image)
    y = 30
    draw.text((width // 2, y), receipt.store, font=font(34), fill=(20, 20, 20), anchor="mt")
    y += 50
    draw.text((width // 2, y), "123 Main Street  -  Tel 555-0142", font=font(18), fill=(60, 60, 60), anchor="mt")
    y += 30
    draw.text((width // 2, y), "2024-12-03  14:27   Register 2", font=font(18), fill=(60, 60, 60), anchor="mt")
    y += 45
    draw.line((30, y, width - 30, y), fill=(80, 80, 80), width=2)
    y += 20
    for name, price in receipt.items:
        draw.text((40, y), name, font=font(24), fill=(20, 20, 20))
        draw.text((width - 40, y), f"{price:.2f}", font=font(24), fill=(20, 20, 20), anchor="ra")
        y += line
    draw.line((30, y + 5, width - 30, y + 5), fill=(80, 80, 80), width=2)
    y += 25
    percent = (receipt.tax_rate * 100).normalize()
    for label, amount, size in (
        ("SUBTOTAL", receipt.subtotal, 24),
        (f"TAX {percent}%", receipt.tax, 24),
        ("TOTAL", receipt.total, 32),
    ):
        draw.text((40, y), label, font=font(size), fill=(20, 20, 20))
        draw.text((width - 40, y), f"${amount:.2f}", font=font(size), fill=(20, 20, 20), anchor="ra")
        y += size + 18
    draw.text(
        (width // 2, height - 40), "THANK YOU FOR SHOPPING WITH US", font=font(18), fill=(60, 60, 60), anchor="mt"
    )
    return image


# --- bar chart ----------------------------------------------------------------------------------

CHART_LABELS = ["Llama 3.2 11B", "Llama 3.2 90B", "Qwen2-VL 7B", "Pixtral 12B", "Molmo 7B", "Phi-3.5 Vision"]


@dataclass(frozen=True)
class BarChart:
    title: str
    bars: tuple[tuple[str, int], ...]


def make_chart(rng: random.Random) -> BarChart:
    labels = rng.sample(CHART_LABELS, 5)
    values = rng.sample(range(18, 190), 5)
    return BarChart("Output tokens per second", tuple(zip(labels, values)))


def draw_chart(chart: BarChart) -> Image.Image:
    width, height = 1000, 640
    left, right, top, bottom = 110, 960, 110, 500
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, 30), chart.title, font=font(34), fill="black", anchor="mt")
    scale_max = 200
    for tick in range(0, scale_max + 1, 50):
        y = bottom - (bottom - top) * tick / scale_max
        draw.line((left, y, right, y), fill=(225, 225, 225), width=1)
        draw.text((left - 12, y), str(tick), font=font(20), fill=(80, 80, 80), anchor="rm")
    draw.line((left, top, left, bottom), fill="black", width=2)
    draw.line((left, bottom, right, bottom), fill="black", width=2)
    draw.text((left - 12, top - 30), "tokens/s", font=font(20), fill=(80, 80, 80), anchor="rb")
    slot = (right - left) / len(chart.bars)
    colours = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188)]
    for i, ((label, value), colour) in enumerate(zip(chart.bars, colours)):
        x0 = left + slot * i + slot * 0.2
        x1 = left + slot * (i + 1) - slot * 0.2
        y = bottom - (bottom - top) * value / scale_max
        draw.rectangle((x0, y, x1, bottom), fill=colour)
        draw.text(((x0 + x1) / 2, y - 8), str(value), font=font(24), fill="black", anchor="mb")
        draw.text(((x0 + x1) / 2, bottom + 18), label, font=font(20), fill="black", anchor="mt")
    return image


# --- homework -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Homework:
    problems: tuple[tuple[int, int, int], ...]  # a, b, the child's answer

    @property
    def correct(self) -> tuple[bool, ...]:
        return tuple(a + b == answer for a, b, answer in self.problems)

    @property
    def score(self) -> int:
        return sum(self.correct)


def make_homework(rng: random.Random, count: int = 12) -> Homework:
    wrong = set(rng.sample(range(count), rng.randint(2, 4)))
    problems: list[tuple[int, int, int]] = []
    for i in range(count):
        a, b = rng.randint(3, 49), rng.randint(3, 49)
        while any((a, b) == (x, y) for x, y, _ in problems):  # each problem tells itself apart
            a, b = rng.randint(3, 49), rng.randint(3, 49)
        answer = a + b
        if i in wrong:
            answer += rng.choice([-10, -2, -1, 1, 2, 10])
        problems.append((a, b, answer))
    return Homework(tuple(problems))


def draw_homework(homework: Homework) -> Image.Image:
    width, height = 900, 820
    image = Image.new("RGB", (width, height), (255, 255, 252))
    draw = ImageDraw.Draw(image)
    for y in range(150, height, 48):
        draw.line((0, y + 40, width, y + 40), fill=(200, 215, 240), width=1)  # ruled paper
    draw.line((70, 0, 70, height), fill=(240, 170, 170), width=2)
    draw.text((100, 30), "Math homework: addition", font=font(36), fill=(30, 30, 90))
    draw.text((100, 85), "Name: Emma    Class 2B", font=font(24), fill=(30, 30, 90))
    half = (len(homework.problems) + 1) // 2
    for i, (a, b, answer) in enumerate(homework.problems):
        column, row = divmod(i, half)
        x, y = 100 + column * 400, 160 + row * 96
        draw.text((x, y), f"{i + 1})", font=font(28), fill=(90, 90, 90))
        draw.text((x + 60, y), f"{a} + {b} = ", font=font(36), fill=(20, 20, 20))
        draw.text((x + 250, y), str(answer), font=font(36), fill=(40, 60, 170))
    return image


# --- nutrition labels ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Drink:
    name: str
    calories: int
    sodium_mg: int
    sugars_g: int
    caffeine_mg: int


@dataclass(frozen=True)
class DrinkPair:
    drinks: tuple[Drink, Drink]

    @property
    def lighter(self) -> Drink:
        return min(self.drinks, key=lambda drink: drink.calories)

    @property
    def heavier(self) -> Drink:
        return max(self.drinks, key=lambda drink: drink.calories)


def make_drinks(rng: random.Random) -> DrinkPair:
    light_name = rng.choice(["Zest Lemon-Lime", "Clear Spring Soda", "Crisp Citrus Zero"])
    heavy_name = rng.choice(["Volt Energy", "Thunder Rush", "Maxx Power"])
    light = Drink(light_name, 0, rng.choice([25, 35, 45, 55]), 0, 0)
    sugars = rng.randint(27, 38)
    heavy = Drink(
        heavy_name,
        sugars * 4 + rng.choice([0, 4, 8]),
        rng.choice([180, 200, 240, 310]),
        sugars,
        rng.choice([80, 120, 160]),
    )
    pair = (light, heavy) if rng.random() < 0.5 else (heavy, light)
    return DrinkPair(pair)


def draw_drinks(pair: DrinkPair) -> Image.Image:
    width, height = 1000, 700
    image = Image.new("RGB", (width, height), (235, 235, 235))
    for i, drink in enumerate(pair.drinks):
        _draw_label(ImageDraw.Draw(image), 40 + i * 490, 40, drink)
    return image


def _draw_label(draw: ImageDraw.ImageDraw, x: int, y: int, drink: Drink) -> None:
    w, black = 430, (0, 0, 0)
    draw.rectangle((x, y, x + w, y + 620), fill="white", outline=black, width=3)
    draw.text((x + w // 2, y + 20), drink.name, font=font(32), fill=black, anchor="mt")
    draw.text((x + 20, y + 75), "Nutrition Facts", font=font(40), fill=black)
    draw.text((x + 20, y + 130), "Serving size 1 can (355 mL)", font=font(22), fill=black)
    draw.rectangle((x + 20, y + 168, x + w - 20, y + 180), fill=black)
    draw.text((x + 20, y + 192), "Calories", font=font(38), fill=black)
    draw.text((x + w - 20, y + 192), str(drink.calories), font=font(44), fill=black, anchor="ra")
    draw.rectangle((x + 20, y + 248, x + w - 20, y + 254), fill=black)
    rows = [
        ("Total Fat", "0g"),
        ("Sodium", f"{drink.sodium_mg}mg"),
        ("Total Carbohydrate", f"{drink.sugars_g}g"),
        ("   Total Sugars", f"{drink.sugars_g}g"),
        ("Protein", "0g"),
        ("Caffeine", f"{drink.caffeine_mg}mg"),
    ]
    for j, (label, amount) in enumerate(rows):
        ry = y + 270 + j * 52
        draw.text((x + 20, ry), label, font=font(26), fill=black)
        draw.text((x + w - 20, ry), amount, font=font(26), fill=black, anchor="ra")
        draw.line((x + 20, ry + 40, x + w - 20, ry + 40), fill=(120, 120, 120), width=1)


# --- dashboard: tire pressure -------------------------------------------------------------------

POSITIONS = ("front left", "front right", "rear left", "rear right")


@dataclass(frozen=True)
class TireDisplay:
    pressures: dict[str, int]  # position -> psi
    low: str
    normal: int


def make_tires(rng: random.Random) -> TireDisplay:
    normal = rng.choice([32, 33, 35, 36])
    low = rng.choice(POSITIONS)
    pressures = {position: normal for position in POSITIONS}
    pressures[low] = rng.randint(17, 24)
    return TireDisplay(pressures, low, normal)


def draw_tires(display: TireDisplay) -> Image.Image:
    width, height = 900, 640
    amber, white, grey = (255, 176, 0), (235, 235, 235), (90, 90, 90)
    image = Image.new("RGB", (width, height), (12, 14, 20))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((20, 20, width - 20, height - 20), radius=40, outline=(50, 55, 70), width=4)
    # The warning lamp: a tire's cross-section with an exclamation mark.
    cx, cy = 150, 150
    draw.arc((cx - 70, cy - 60, cx + 70, cy + 80), start=200, end=340, fill=amber, width=10)
    draw.line((cx - 66, cy + 10, cx - 50, cy + 70), fill=amber, width=10)
    draw.line((cx + 66, cy + 10, cx + 50, cy + 70), fill=amber, width=10)
    draw.line((cx - 55, cy + 72, cx + 55, cy + 72), fill=amber, width=10)
    draw.text((cx, cy + 18), "!", font=font(64), fill=amber, anchor="mm")
    draw.text((cx, cy + 115), "LOW TIRE PRESSURE", font=font(24), fill=amber, anchor="mt")
    # The car from above, with one reading beside each wheel.
    car = (500, 120, 680, 540)
    draw.rounded_rectangle(car, radius=60, outline=white, width=5)
    draw.rounded_rectangle((525, 230, 655, 300), radius=12, outline=grey, width=3)  # windscreen
    draw.text((590, 95), "FRONT", font=font(22), fill=grey, anchor="mb")
    wheels = {"front left": (470, 180), "front right": (710, 180), "rear left": (470, 440), "rear right": (710, 440)}
    for position, (x, y) in wheels.items():
        low = position == display.low
        colour = amber if low else white
        draw.rounded_rectangle((x - 18, y - 45, x + 18, y + 45), radius=8, fill=colour)
        text_x = x - 40 if x < 590 else x + 40
        anchor = "rm" if x < 590 else "lm"
        draw.text((text_x, y - 12), str(display.pressures[position]), font=font(46), fill=colour, anchor=anchor)
        draw.text((text_x, y + 28), "PSI", font=font(22), fill=colour, anchor=anchor)
    return image
