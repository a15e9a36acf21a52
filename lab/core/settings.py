"""The fixed-key sections of an experiment config as frozen dataclasses: what the layers below the stages take.

``lab.config.sections`` builds them once from a validated config (or a checkpoint's recorded one); the stages hand
them, with the components they built, to the LightningModules (lab/train/). Nothing here reads a config: the YAML,
its dotted keys and every recorded config.yaml keep their shape, these are typed views of a few of its nodes.
Open nodes (``data``, ``quantizer``, ``tokenizer``, ``generator``, ``head``, ``correction``, ``trainer``) are
keyword arguments of a constructor and stay mappings.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OptimSettings:
    """``optim:``: AdamW with linear warm-up and cosine decay (lab/train/optim.py)."""
    learning_rate: float
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    min_lr_ratio: float
    ema_decay: float = 0.0  # (configs of runs before the weight average have no ema_decay)


@dataclass(frozen=True)
class LossSettings:
    """``loss:``: the tokenizer's training loss."""
    recon: str  # l1 | l2
    lpips_weight: float
    lpips_net: str
    lpips_size: int | None


@dataclass(frozen=True)
class LoaderSettings:
    """``loader:`` after the run's layout is resolved (batch_size is per process)."""
    batch_size: int
    global_batch_size: int | None
    num_workers: int
    image_size: int


@dataclass(frozen=True)
class EvalSettings:
    """``eval:``: the final evaluation's sizes and the FID protocol's settings (lab/metrics/fid_protocol.py)."""
    batches: int
    fid_samples: int
    fid_reference_limit: int | None
    kid_subsets: int
    kid_subset_size: int
    lpips_size: int | None
    grid_images: int
    label_noise: tuple[float, ...]


@dataclass(frozen=True)
class SampleSettings:
    """``sample:``: sampling options (lab/generation/sampling.py ``SampleOptions.of``) and the grid's size."""
    guidance: float
    guidance_schedule: str
    temperature: float
    top_k: int
    top_p: float
    grid: int


@dataclass(frozen=True)
class GeneratorLossSettings:
    """``generator_loss:``."""
    scale_reweight: bool


@dataclass(frozen=True)
class TokenizerTrainSettings:
    """``tokenizer_train:``: how a generator experiment's own tokenizer is trained."""
    max_steps: int
    learning_rate: float
    batch_size: int
    seed: int
    precision: str | None = None


@dataclass(frozen=True)
class Placement:
    """Where a run trains and in what precision: the ``trainer:`` keys that the speed settings (lab/runtime/machine.py)
    and the thread sharing (lab/runtime/trainer.py) read. The ``trainer:`` node itself stays Lightning's keyword
    arguments; a key it lacks takes Lightning's default."""
    accelerator: str = "cpu"
    devices: int | str | tuple = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"


@dataclass(frozen=True)
class Sections:
    """Every fixed-key section of one config. A section that a recorded config lacks is None: ``generator_loss``,
    ``sample`` and ``tokenizer_train`` in a tokenizer checkpoint's config of 0.1, ``eval`` in the oldest ones."""
    optim: OptimSettings
    loss: LossSettings
    loader: LoaderSettings
    eval: EvalSettings | None
    sample: SampleSettings | None
    generator_loss: GeneratorLossSettings | None
    tokenizer_train: TokenizerTrainSettings | None


# The name a head's loss is logged under (TensorBoard tags, final/val_<tag>): a bit's BCE and a token's CE differ in
# scale, so each head's loss has its own. The heads (lab/models/heads.py) take their ``loss_name`` from here.
LOSS_TAGS = {"index": "index_ce", "bitwise": "bits_bce", "digits": "digits_ce", "masked_bits": "masked_bits_bce"}


def loss_tag(head_name: str) -> str:
    """The loss tag of the head registered as ``head_name`` (index_ce for a head this table does not know)."""
    return LOSS_TAGS.get(str(head_name), "index_ce")
