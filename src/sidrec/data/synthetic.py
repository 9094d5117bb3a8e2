"""The embedded default dataset: a generated catalogue and users with planted sequential and textual structure.

Why generated data: the README's first command must work on a fresh machine with no files and no
network, and it must show something true: a model that learns beats popularity by a wide margin, the
item text alone beats popularity, and the two together beat either (the content fusion chooses a weight
above 0 on validation). The generator plants exactly the structure the methods here can exploit:

* a category tree: 6 top categories of 4 product types each; one *topic* per product type (its noun and a
  few words describe every item of it);
* product *lines*: within a top category, a brand's series with one item per topic (``Kalori Amber lavender
  serum``, ``Kalori Amber lavender toner``); the items of a line share their brand, line name and style;
* *styles* (lavender, citrus, ...): each line has one; each user likes one, and buys items of it more often;
* Zipf-like popularity inside each topic;
* users whose next item follows topic transitions (a topic leads to itself or to two other topics of its
  top category) or, part of the time, the *complement* of the current item: the same line's item in the
  topic's first successor (a cleanser is followed by the toner of its line).

What the text shows and what it hides: the line mates, the style and the category of an item are in its
text, so the content ranker (the cosine to the last items) finds the complement and the user's taste; which
line mate comes next, the topic transitions and the popularity are not, so a sequential model (SASRec,
TIGER) that learns them beats the content ranker, and its fusion with the content beats both.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same dataset.
"""

from __future__ import annotations

import numpy as np

from sidrec.data.dataset import Dataset

_TOPS = {
    "Skin Care": ["serum", "cream", "cleanser", "toner"],
    "Makeup": ["lipstick", "palette", "eyeliner", "mascara"],
    "Hair Care": ["shampoo", "conditioner", "comb", "dryer"],
    "Kitchen": ["kettle", "blender", "skillet", "grinder"],
    "Outdoor": ["tent", "lantern", "backpack", "jacket"],
    "Toys": ["puzzle", "kite", "robot", "blocks"],
}
_TOP_NAMES = list(_TOPS)
_WORDS = (  # topic words: a handful describes each product type
    "soft bright matte glossy silk cotton linen wool leather steel bamboo cedar maple oak pine "
    "ocean forest desert alpine meadow river sunset midnight amber coral ivory jade ruby sapphire onyx pearl "
    "gentle intense daily classic modern rapid steady quiet sharp heavy light thick thin dense airy crisp plush "
    "rugged sleek compact deluxe mini giant slim round square curved folding portable wireless magnetic modular"
).split()
_STYLES = [  # (style word, its adjective): what a user's taste is about
    ("lavender", "calming"), ("citrus", "zesty"), ("vanilla", "cozy"), ("mint", "cooling"),
    ("rose", "romantic"), ("charcoal", "detox"), ("coconut", "tropical"), ("honey", "nourishing"),
    ("neon", "playful"), ("vintage", "retro"), ("arctic", "frosty"), ("safari", "wild"),
]
_LINES = ("Aurora Velvet Essence Pure Glow Nova Terra Zen Bloom Prime Atlas Echo Halo Lumen Oasis Pulse "
          "Quartz Summit Tide Vista Willow Zephyr Ember Flora Harbor Ivy Jubilee Karma Lotus Mosaic").split()
_BRAND_SYL = "ka lo mi ra ve zu to ne sa fi qu bo da re li".split()


def _draw(rng: np.random.Generator, weights: np.ndarray) -> int:
    """An index drawn with probability proportional to ``weights`` (>= 0, positive sum); -1 when all are 0.

    Why not ``rng.choice(p=...)``: it normalises and checks ``p`` on every call, the generator's main cost.
    """
    c = np.cumsum(weights)
    if c[-1] <= 0:
        return -1
    return int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), len(c) - 1))


def generate(n_users: int = 3000, n_items: int = 600, seed: int = 7, n_topics: int = 24,
             mean_len: float = 8.0, complement_prob: float = 0.45, n_styles: int = 12,
             taste: float = 6.0) -> Dataset:
    """Generate the synthetic dataset (see module docstring).

    ``taste``: how many times more often a user picks an item of the style they like than another item of the
    same popularity. A catalogue smaller than ``n_topics`` gets one topic per item (each topic needs a member to
    draw from; the default 24 topics made 5 items crash with numpy's "high <= 0"); the topic graph needs at
    least 3 items.
    """
    if n_items < 3:
        from sidrec.errors import SidrecError

        raise SidrecError(f"data.synthetic_items: the synthetic generator needs at least 3 items, got {n_items}")
    n_topics = min(n_topics, n_items)
    n_styles = max(1, min(n_styles, len(_STYLES)))
    rng = np.random.default_rng(seed)
    n_tops = len(_TOP_NAMES)
    top_of = np.arange(n_topics) % n_tops
    noun_of = [_TOPS[_TOP_NAMES[top_of[t]]][(t // n_tops) % 4] for t in range(n_topics)]
    # a leaf name per topic (numbered beyond the 24 product types)
    leaves = [n.title() + ("" if n.endswith("s") else "s") + (f" {t // (4 * n_tops) + 1}" if t >= 4 * n_tops else "")
              for t, n in enumerate(noun_of)]
    words = rng.permutation(_WORDS)
    per = max(3, len(words) // n_topics)
    topic_words = [words[(t * per) % len(words):(t * per) % len(words) + per] for t in range(n_topics)]
    n_brands = max(n_tops, n_topics * 3 // 2)
    brands = ["".join(rng.choice(_BRAND_SYL, 3)).title() for _ in range(n_brands)]
    brand_top = np.arange(n_brands) % n_tops  # a brand sells in one top category

    topic = rng.permutation(np.arange(n_items) % n_topics)
    members = [np.flatnonzero(topic == t) for t in range(n_topics)]
    # lines: the k-th item (in a random order) of every topic of a top category form line k of that category
    slot = np.empty(n_items, dtype=np.int64)
    for m in members:
        slot[m] = rng.permutation(len(m))
    line_key = top_of[topic] * (n_items + 1) + slot
    keys, line = np.unique(line_key, return_inverse=True)
    n_lines = len(keys)
    line_top = keys // (n_items + 1)
    line_style = rng.integers(n_styles, size=n_lines)
    line_brand = np.array([rng.choice(np.flatnonzero(brand_top == line_top[k])) for k in range(n_lines)])
    line_name = np.empty(n_lines, dtype=object)  # distinct within a brand (a numbered suffix beyond 30 lines)
    for b in range(n_brands):
        own = np.flatnonzero(line_brand == b)
        names = rng.permutation(_LINES)
        line_name[own] = [names[j % len(names)] + (f"-{j // len(names) + 1}" if j >= len(names) else "")
                          for j in range(len(own))]
    style = line_style[line]

    items: dict[str, list] = {"title": [], "brand": [], "categories": [], "description": []}
    for i in range(n_items):
        t, k = topic[i], line[i]
        word, adj = _STYLES[style[i]]
        w = rng.choice(topic_words[t], 3, replace=False)
        b = brands[line_brand[k]]
        items["title"].append(f"{b} {line_name[k]} {word} {w[0]} {noun_of[t]}")
        items["brand"].append(b)
        items["categories"].append([_TOP_NAMES[top_of[t]], leaves[t]])
        items["description"].append(f"{w[1]} {w[2]}, {adj} {word}")

    # popularity inside each topic (Zipf-like) and topic successors (inside the top category when it has others)
    pop = np.empty(n_items)
    for m in members:
        pop[m] = 1.0 / np.arange(1, len(m) + 1) ** 0.9
    succ = np.empty((n_topics, 3), dtype=np.int64)
    for t in range(n_topics):
        same = np.flatnonzero((top_of == top_of[t]) & (np.arange(n_topics) != t))
        pool = same if len(same) >= 2 else np.delete(np.arange(n_topics), t)
        succ[t] = np.concatenate([[t], rng.choice(pool, 2, replace=False)])
    succ_p = np.array([0.3, 0.4, 0.3])
    # the complement: the line mate in the first successor topic (the item in the same slot there), else (a topic
    # one item shorter) an item of that topic in the same style
    by_slot = [m[np.argsort(slot[m])] for m in members]
    complement = np.empty(n_items, dtype=np.int64)
    for i in range(n_items):
        nxt = by_slot[succ[topic[i], 1]]
        if slot[i] < len(nxt):
            complement[i] = nxt[slot[i]]
            continue
        mates = nxt[style[nxt] == style[i]]
        mates = mates if len(mates) else nxt
        complement[i] = mates[rng.integers(len(mates))]

    lengths = np.minimum(5 + rng.geometric(1.0 / max(1.0, mean_len - 4), n_users), 40)
    likes = rng.integers(n_styles, size=n_users)
    seen = np.zeros(n_items, dtype=bool)
    all_items = np.arange(n_items)
    seqs: list[list[int]] = []
    for u in range(n_users):  # generation only, not a hot path
        def pick(m: np.ndarray, like: int = int(likes[u])) -> int:
            """An unseen item of ``m``, by popularity times the taste boost; -1 when all were bought."""
            j = _draw(rng, pop[m] * np.where(style[m] == like, taste, 1.0) * ~seen[m])
            return -1 if j < 0 else int(m[j])

        cur = pick(members[int(rng.integers(n_topics))])
        seq = [cur]
        seen[cur] = True
        while len(seq) < lengths[u]:
            c = int(complement[cur])
            if rng.random() < complement_prob and not seen[c]:
                nxt = c
            else:
                nxt = pick(members[succ[topic[cur], _draw(rng, succ_p)]])
                if nxt < 0:  # that topic is bought out (a small catalogue): any item not bought yet
                    nxt = pick(all_items)
                if nxt < 0:
                    break
            seq.append(nxt)
            seen[nxt] = True
            cur = nxt
        seen[seq] = False
        if len(seq) >= 3:
            seqs.append(seq)
    item_ids = [f"I{i:05d}" for i in range(n_items)]
    user_ids = [f"U{u:06d}" for u in range(len(seqs))]
    return Dataset.from_sequences("synthetic", seqs, item_ids, user_ids, items, source=f"synthetic(seed={seed})")
