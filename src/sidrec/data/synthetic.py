"""The embedded default dataset: a generated catalogue and users with planted sequential structure.

Why generated data: the README's first command must work on a fresh machine with no files and no
network, and it must show something true: a model that learns beats popularity by a wide margin. The
generator plants exactly the structure the methods here can exploit:

* a category tree (top categories -> leaf categories), one latent *topic* per leaf category;
* brands tied to a few topics, item titles built from words tied to the item's topic (so text
  embeddings, and therefore semantic IDs, cluster by topic);
* Zipf-like popularity inside each topic;
* users whose next item follows topic transitions (each topic leads to a few successor topics) and, part
  of the time, an item-level "complement" relation (item A is often followed by its complement B).

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed gives the same dataset.
"""

from __future__ import annotations

import numpy as np

from sidrec.data.dataset import Dataset

_WORDS = (
    "soft bright matte glossy silk velvet cotton linen wool leather steel bamboo cedar maple oak pine "
    "ocean forest desert alpine meadow river sunset midnight amber coral ivory jade ruby sapphire onyx pearl "
    "citrus lavender mint vanilla rose jasmine sandal musk honey cocoa coffee berry peach melon cherry lemon "
    "gentle intense daily travel classic modern vintage sport studio urban rustic coastal nordic tropical "
    "hydrating firming calming clarifying smoothing repairing brightening cooling warming protecting "
    "compact deluxe mini giant slim round square curved folding portable wireless magnetic modular "
    "rapid steady quiet loud sharp blunt heavy light thick thin dense airy crisp plush rugged sleek"
).split()
_NOUNS = (
    "serum cream cleanser toner mask lotion balm oil polish lacquer lipstick gloss liner palette shadow "
    "brush comb dryer roller clipper kettle blender grinder skillet tent lantern backpack bottle jacket "
    "glove helmet racket ball puzzle blocks doll kite robot train car drone"
).split()
_TOPS = ["Skin Care", "Makeup", "Hair Care", "Kitchen", "Outdoor", "Toys"]
_BRAND_SYL = "ka lo mi ra ve zu to ne sa fi qu bo da re li".split()


def generate(n_users: int = 3000, n_items: int = 600, seed: int = 7, n_topics: int = 24,
             mean_len: float = 8.0, complement_prob: float = 0.45) -> Dataset:
    """Generate the synthetic dataset (see module docstring).

    A catalogue smaller than ``n_topics`` gets one topic per item (each topic needs a member to draw from; the
    default 24 topics made 5 items crash with numpy's "high <= 0"); the topic graph needs at least 3 items.
    """
    if n_items < 3:
        from sidrec.errors import SidrecError

        raise SidrecError(f"data.synthetic_items: the synthetic generator needs at least 3 items, got {n_items}")
    n_topics = min(n_topics, n_items)
    rng = np.random.default_rng(seed)
    n_tops = len(_TOPS)
    leaves = [f"{_NOUNS[t % len(_NOUNS)].title()}s {t}" for t in range(n_topics)]
    top_of = np.arange(n_topics) % n_tops
    words = rng.permutation(_WORDS)
    per = max(3, len(words) // n_topics)
    topic_words = [words[(t * per) % len(words):(t * per) % len(words) + per] for t in range(n_topics)]
    n_brands = max(4, n_topics * 3 // 2)
    brands = ["".join(rng.choice(_BRAND_SYL, 3)).title() for _ in range(n_brands)]
    brand_topics = [rng.choice(np.flatnonzero(top_of == top_of[b % n_topics]), 2) for b in range(n_brands)]

    topic = rng.permutation(np.arange(n_items) % n_topics)
    items: dict[str, list] = {"title": [], "brand": [], "categories": [], "description": []}
    for i in range(n_items):
        t = topic[i]
        cands = [b for b in range(n_brands) if t in brand_topics[b]] or [int(t) % n_brands]
        b = brands[cands[rng.integers(len(cands))]]
        w = rng.choice(topic_words[t], 3, replace=False)
        noun = _NOUNS[t % len(_NOUNS)]
        items["title"].append(f"{b} {w[0]} {w[1]} {noun} {w[2]}")
        items["brand"].append(b)
        items["categories"].append([_TOPS[top_of[t]], leaves[t]])
        items["description"].append(" ".join(rng.choice(topic_words[t], 5)))

    # popularity inside each topic (Zipf-like) and topic successors
    pop = np.empty(n_items)
    members = [np.flatnonzero(topic == t) for t in range(n_topics)]
    for m in members:
        pop[m] = 1.0 / np.arange(1, len(m) + 1) ** 0.9
    succ = np.stack([np.concatenate([[t], rng.choice(np.delete(np.arange(n_topics), t), 2, replace=False)])
                     for t in range(n_topics)])
    succ_p = np.array([0.3, 0.4, 0.3])
    complement = np.empty(n_items, dtype=np.int64)
    for i in range(n_items):
        nxt = members[succ[topic[i], 1]]
        complement[i] = nxt[rng.integers(len(nxt))]

    lengths = np.minimum(5 + rng.geometric(1.0 / max(1.0, mean_len - 4), n_users), 40)
    seqs: list[list[int]] = []
    for u in range(n_users):  # generation only, not a hot path
        cur = int(rng.integers(n_items))
        seq, seen = [cur], {cur}
        while len(seq) < lengths[u]:
            c = int(complement[cur])
            if rng.random() < complement_prob and c not in seen:
                nxt = c
            else:
                t = succ[topic[cur], rng.choice(3, p=succ_p)]
                m = members[t]
                p = pop[m] * np.array([j not in seen for j in m])
                if p.sum() == 0:
                    break
                nxt = int(m[rng.choice(len(m), p=p / p.sum())])
            seq.append(nxt)
            seen.add(nxt)
            cur = nxt
        if len(seq) >= 3:
            seqs.append(seq)
    item_ids = [f"I{i:05d}" for i in range(n_items)]
    user_ids = [f"U{u:06d}" for u in range(len(seqs))]
    return Dataset.from_sequences("synthetic", seqs, item_ids, user_ids, items, source=f"synthetic(seed={seed})")
