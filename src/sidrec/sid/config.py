"""The ``tokenizer`` config section.

One flat dataclass for every tokenizer kind: the options of a kind it does not use are ignored, so a user
can switch ``tokenizer.kind`` on the command line without editing other keys. Each option says which
kinds read it.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from sidrec.errors import SidrecError

KINDS = ("rqkmeans", "rqvae", "opq", "pq")
RQ_KINDS = ("rqkmeans", "rqvae")


@dataclass
class TokenizerConfig:
    """Item embedding -> semantic ID settings (see docs/tokenizers.md)."""

    # how item vectors become codes: rqkmeans (residual k-means), rqvae (residual VQ-VAE), opq / pq (product
    # quantisation, with / without a learned rotation; ACERec's tokenizer); docs/tokenizers.md
    kind: typing.Literal["rqkmeans", "rqvae", "opq", "pq"] = "rqkmeans"
    seed: int | None = None  # the tokenizer's seed; None: the run's top-level seed (pipeline) or 0 (build_tokenizer)

    # -- rqkmeans, rqvae --
    levels: int = 3  # codes per item before the disambiguation code (residual levels)
    codebook_sizes: list[int] = field(default_factory=lambda: [256, 256, 256])  # one per level, or one for all

    # -- all kinds --
    # what to do when items share a SID: append: add a disambiguation code | refuse: raise on any shared SID
    collisions: typing.Literal["append", "refuse"] = "append"
    # auto: always for rq kinds, if_needed for opq/pq
    extra_code: typing.Literal["always", "if_needed", "auto"] = "auto"
    collision_codebook: int = 256  # size of the disambiguation level (largest group that can be resolved)

    # -- rqkmeans --
    kmeans_iters: int = 25  # k-means iterations per level
    balanced: bool = False  # capacity-constrained assignment: no code holds > ceil(n/K * balance_factor)
    balance_factor: float = 1.1  # balanced=true: how far above an even share a code may fill (>= 1)

    # -- rqvae --
    hidden_dims: list[int] = field(default_factory=lambda: [512, 256, 128])  # encoder MLP widths (decoder mirrored)
    latent_dim: int = 32  # width of the latent that the residual codebooks quantise
    epochs: int = 300  # passes over the catalogue while fitting the RQ-VAE (items, not interactions)
    batch_size: int = 1024  # items per RQ-VAE step
    lr: float = 1e-3  # the RQ-VAE's learning rate (the recommender's is train.lr)
    weight_decay: float = 1e-4  # the RQ-VAE optimiser's weight decay
    beta: float = 0.25  # commitment weight
    estimator: typing.Literal["ste", "gumbel", "soft"] = "ste"  # the quantiser's gradient estimator
    tau: float = 1.0  # softmax temperature for gumbel / soft
    noise_scale: float = 1.0  # Gumbel noise scale s (gumbel only; none in eval mode)
    dead_code_steps: int = 20  # re-seed codes unused for this many steps (0 = never)
    kmeans_init: bool = True  # initialise each level's codebook by k-means on the first batch's residuals
    device: str = "auto"  # auto: the run's train.device (RQ-VAE training; faiss k-means on a GPU where faiss-gpu is)
    progress: bool = True  # a progress bar while the RQ-VAE trains

    # -- opq, pq --
    subspaces: int = 32  # m: the item vector is cut into this many parts, one code each
    subspace_codes: int = 256  # K per subspace (faiss needs a power of two)
    pca_dim: int = 0  # 0 = no PCA before the rotation
    pca_whiten: bool = False  # give every kept principal axis the same variance (RPG: whitened PCA before OPQ)
    opq_iters: int = 25  # faiss OPQMatrix.niter (alternations of rotation / PQ fit)

    # -- diagnostics --
    collapse_threshold: float = 0.1  # a level is 'collapsed' below this utilisation (or perplexity share)
    # value ranges, checked when a config is read (sidrec.config.validate_config)
    RANGES: typing.ClassVar[dict[str, str]] = {"levels": "> 0", "codebook_sizes": "> 0", "collision_codebook": "> 0",
        "kmeans_iters": "> 0", "balance_factor": ">= 1", "hidden_dims": "> 0", "latent_dim": "> 0", "epochs": "> 0",
        "batch_size": "> 0", "lr": "in (0, 10]", "weight_decay": "in [0, 1]", "beta": ">= 0", "tau": "> 0",
        "noise_scale": ">= 0", "dead_code_steps": ">= 0", "subspaces": "> 0", "subspace_codes": "> 0",
        "pca_dim": ">= 0", "opq_iters": "> 0", "collapse_threshold": "in [0, 1]"}

    def sizes(self) -> list[int]:
        """Per-level codebook sizes of a residual tokenizer (a single size is used for every level)."""
        sizes = list(self.codebook_sizes)
        if self.levels < 1:
            raise SidrecError(f"tokenizer.levels must be >= 1, got {self.levels}")
        if len(sizes) == 1:
            sizes = sizes * self.levels
        if len(sizes) != self.levels:
            raise SidrecError(
                f"tokenizer.codebook_sizes has {len(sizes)} entries but tokenizer.levels={self.levels}; "
                "give one size per level or a single size for all levels"
            )
        if any(k < 2 for k in sizes):
            raise SidrecError(f"tokenizer.codebook_sizes must all be >= 2, got {sizes}")
        return sizes

    def appends_code(self, collided: bool) -> bool:
        """Whether the resolved SIDs get a disambiguation code (TIGER's 4th code)."""
        mode = self.extra_code
        if mode == "auto":
            mode = "always" if self.kind in RQ_KINDS else "if_needed"
        if mode not in ("always", "if_needed"):
            raise SidrecError(f"tokenizer.extra_code must be always, if_needed or auto, got '{self.extra_code}'")
        return mode == "always" or collided
