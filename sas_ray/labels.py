"""Label sets and text prompts of the evaluation protocol (SPEC §4)."""

SCANNET_20 = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "other",
)
# NYU40 ids of the 20 ScanNet classes, in label order (SPEC §1.2); every other id maps to 255.
SCANNET_20_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
MATTERPORT_21 = SCANNET_20 + ("ceiling",)
MATTERPORT_21_NYU40_IDS = SCANNET_20_NYU40_IDS + (22,)
NUSCENES_16 = (
    "barrier", "bicycle", "bus", "car", "construction vehicle", "motorcycle", "person", "traffic cone", "trailer",
    "truck", "drivable surface", "other flat", "sidewalk", "terrain", "manmade", "vegetation",
)

# Matterport3D long-tail sets (SPEC §1.2, §4): the first K distinct NYU class names of category_mapping.tsv, copied
# verbatim from OpenScene dataset/label_constants.py (spelling kept: 'refridgerator', 'excercise equipment').
MATTERPORT_40 = (
    "wall", "door", "ceiling", "floor", "picture", "window", "chair", "pillow", "lamp", "cabinet", "curtain", "table",
    "plant", "mirror", "towel", "sink", "shelves", "sofa", "bed", "night stand", "toilet", "column", "banister",
    "stairs", "stool", "vase", "television", "pot", "desk", "box", "coffee table", "counter", "bench", "garbage bin",
    "fireplace", "clothes", "bathtub", "book", "air vent", "faucet",
)
MATTERPORT_80 = MATTERPORT_40 + (
    "photo", "toilet paper", "fan", "railing", "sculpture", "dresser", "rug", "ottoman", "bottle", "refridgerator",
    "bookshelf", "wardrobe", "pipe", "monitor", "stand", "drawer", "container", "light switch", "purse", "door way",
    "basket", "chandelier", "oven", "clock", "stove", "washing machine", "shower curtain", "fire alarm", "bin",
    "chest", "microwave", "blinds", "bowl", "tissue box", "plate", "tv stand", "shoe", "heater", "headboard",
    "bucket",
)
MATTERPORT_160 = MATTERPORT_80 + (
    "candle", "flower pot", "speaker", "furniture", "sign", "air conditioner", "fire extinguisher", "curtain rod",
    "floor mat", "printer", "telephone", "blanket", "handle", "shower head", "soap", "keyboard", "thermostat",
    "radiator", "kitchen island", "paper towel", "sheet", "glass", "dishwasher", "cup", "ladder", "garage door", "hat",
    "exit sign", "piano", "board", "rope", "ball", "excercise equipment", "hanger", "candlestick", "light", "scale",
    "bag", "laptop", "treadmill", "guitar", "display case", "toilet paper holder", "bar", "tray", "urn",
    "decorative plate", "pool table", "jacket", "bottle of soap", "water cooler", "utensil", "tea pot",
    "stuffed animal", "paper towel dispenser", "lamp shade", "car", "toilet brush", "doll", "drum", "whiteboard",
    "range hood", "candelabra", "toy", "foot rest", "soap dish", "placemat", "cleaner", "computer", "knob", "paper",
    "projector", "coat hanger", "case", "pan", "luggage", "trinket", "chimney", "person", "alarm",
)

# nuScenes detailed prompts (OpenScene `map_nuscenes_details`, on by default): the 43 names are scored, the argmax
# is mapped back to the 16 evaluation classes by NUSCENES_43_TO_16 (index into NUSCENES_16).
NUSCENES_43 = (
    "barrier", "barricade", "bicycle", "bus", "car", "bulldozer", "excavator", "concrete mixer", "crane",
    "dump truck", "motorcycle", "person", "pedestrian", "traffic cone", "trailer", "semi trailer", "cargo container",
    "shipping container", "freight container", "truck", "road", "curb", "traffic island", "traffic median",
    "sidewalk", "grass", "grassland", "lawn", "meadow", "turf", "sod", "building", "wall", "pole", "awning", "tree",
    "trunk", "tree trunk", "bush", "shrub", "plant", "flower", "woods",
)
NUSCENES_43_TO_16 = (
    0, 0, 1, 2, 3, 4, 4, 4, 4, 4,
    5, 6, 6, 7, 8, 8, 8, 8, 8,
    9, 10, 11, 11, 11, 12, 13, 13, 13, 13, 13, 13,
    14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15,
)

LABEL_SETS: dict[str, tuple[str, ...]] = {
    "scannet20": SCANNET_20,
    "matterport21": MATTERPORT_21,
    "matterport40": MATTERPORT_40,
    "matterport80": MATTERPORT_80,
    "matterport160": MATTERPORT_160,
    "nuscenes16": NUSCENES_16,
}

# Which entry of each LABEL_SETS list OpenScene prompts as the bare word "other" (pass it to
# `prompts(labels, other_index)`). OpenScene decides by data root: ScanNet -> last entry; any root containing
# "matterport_3d" -> SECOND-TO-LAST entry, which also hits the 40/80/160 lists and turns 'air vent', 'headboard' and
# 'person' into "other" (a quirk, kept for comparable numbers); nuScenes (16 or the 43 detailed prompts) -> none.
OPENSCENE_OTHER_INDEX: dict[str, int | None] = {
    "scannet20": len(SCANNET_20) - 1,
    "matterport21": len(MATTERPORT_21) - 2,
    "matterport40": len(MATTERPORT_40) - 2,
    "matterport80": len(MATTERPORT_80) - 2,
    "matterport160": len(MATTERPORT_160) - 2,
    "nuscenes16": None,
}


def prompts(labels: tuple[str, ...] | list[str], other_index: int | None = None) -> list[str]:
    """'a {label} in a scene' for every label except the 'other' class, which stays the bare word 'other'.

    `other_index` defaults to the position of the label 'other' if present (SPEC §4 prompt rule)."""
    if other_index is None and "other" in labels:
        other_index = list(labels).index("other")
    return ["other" if i == other_index else f"a {name} in a scene" for i, name in enumerate(labels)]


def vocabulary_mismatch(data_label_set: str, evaluated_label_set: str) -> str | None:
    """Why ground truth stored as indices of `data_label_set` cannot be scored with `evaluated_label_set`, or None:
    every class index of the data must name the same class in the evaluated vocabulary (the data's classes must be
    its first entries), else predictions and labels disagree silently (ScanNet's 'floor' would be counted as the
    'door' of matterport160)."""
    data, evaluated = LABEL_SETS[data_label_set], LABEL_SETS[evaluated_label_set]
    if evaluated[:len(data)] == data:
        return None
    compatible = sorted(name for name, names in LABEL_SETS.items() if names[:len(data)] == data)
    if len(evaluated) < len(data):
        detail = f"has {len(evaluated)} classes, the data's labels go up to {len(data) - 1} ({data[-1]!r})"
    else:
        k = next(i for i, (a, b) in enumerate(zip(data, evaluated)) if a != b)
        detail = f"names class {k} {evaluated[k]!r}, the data's label {k} is {data[k]!r}"
    return (f"label_set {evaluated_label_set!r} does not match the data's labels ({data_label_set!r}): it {detail}; "
            f"use one of {compatible}")
