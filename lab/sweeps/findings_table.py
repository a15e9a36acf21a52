"""The nine findings of issue 17, declared: what the paper claims (its numbers from the papers' tables, as in
``/work/shared/REFERENCE.md``), which suite's results decide it, and the contrasts that decide it, each with the
sign the paper's effect has. ``lab/sweeps/findings_decide.py`` computes the verdicts (``lab/sweeps/findings.py``
writes them); adding a finding is a ``Finding(...)`` here. Plain data: importing this module imports nothing else of
the project.

A contrast's ``paper_sign`` is the sign of its *raw* effect in the paper's direction: for ``paired``
``case - baseline`` (so a lower gFID for the case is -1, a higher PSNR +1; with ``other`` set, the baseline's
``other`` metric is subtracted from the case's ``metric``: a cross-metric contrast), for ``dod`` the difference of
differences, for ``within`` ``metric - other``, for ``correlation`` Pearson r(other, metric), for ``slope`` the
growth of log2(peak memory) per bit of ``case`` minus that of ``baseline``. An ``equivalence`` contrast has no
sign: the paper claims ``case - baseline`` is about 0, and it is decided by two one-sided tests against
``margin`` (in the metric's units, or a fraction of the baseline's mean with ``margin_of_baseline``); the margin
is declared beside the finding with the reason for its size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

KINDS = ("paired", "dod", "within", "correlation", "slope", "equivalence")
LADDER = ("xs", "s", "m", "l", "xl")  # generator.size, smallest first (lab/train/generator.py's sizes)
# A suite's results were made under issue 13's protocol when they have these columns (lab/metrics/fid_protocol.py:
# generator runs record kid and the normalized gFID, tokenizer runs the rKID beside rFID).
PROTOCOL_COLUMNS = {"tokenizer": ("rkid",), "generator": ("kid", "gfid_normalized")}
MIN_SEEDS = 3
BENCH = "bench"  # the pseudo-suite of F2: results/bench/quantizers.json from `make bench`


@dataclass(frozen=True)
class Contrast:
    """One comparison a finding is decided on (see the module docstring for ``kind`` and ``paper_sign``)."""
    label: str
    metric: str
    kind: str = "paired"
    paper_sign: int = -1
    axis: str = "case"            # paired / dod / equivalence: the column whose values ``case`` and ``baseline`` are
    case: str = ""                # paired / equivalence: may be an fnmatch pattern matching one value (``vq-*``)
    baseline: str = ""
    within: tuple[str, ...] = ()  # columns held equal between case and baseline (compared per value)
    where: Mapping[str, str] = field(default_factory=dict)  # fnmatch filters on the rows used
    over: str = ""                # dod: the axis whose smallest and largest value the gap is compared at
    other: str = ""               # within: the metric subtracted; correlation: the x of r(x, metric); paired: the
                                  # baseline's metric when it is not ``metric``
    margin: float = 0.0           # equivalence: the margin (see the module docstring)
    margin_of_baseline: bool = False
    show: tuple[str, ...] = ()    # paired: metrics whose case and baseline means are printed beside the verdict


@dataclass(frozen=True)
class Finding:
    id: str
    title: str
    source: str
    paper: str                    # the paper's claim with its numbers
    suite: str                    # experiments/ablations/<suite>.yaml, published to results/<suite>/
    stage: str                    # tokenizer | generator: which protocol columns its results must have
    contrasts: tuple[Contrast, ...]
    note: str = ""                # what the contrasts measure here that the paper's setting does not, or how to settle it


FINDINGS: tuple[Finding, ...] = (
    Finding(
        "F1", "BSQ reconstruction improves with vocabulary 2^16 → 2^64", "Infinity Tab.4",
        "2^16 / 2^32 / 2^64: PSNR 20.9 / 22.7 / 24.9 dB, rFID 1.22 / 0.61 / 0.33 (rFID@256); better at every step",
        "tokenizer_vocab", "tokenizer",
        (Contrast("2^16 → 2^32, PSNR", "psnr", paper_sign=+1, case="bsq-2^32", baseline="bsq-2^16"),
         Contrast("2^32 → 2^64, PSNR", "psnr", paper_sign=+1, case="bsq-2^64", baseline="bsq-2^32"),
         Contrast("2^16 → 2^32, rFID", "rfid", paper_sign=-1, case="bsq-2^32", baseline="bsq-2^16"),
         Contrast("2^32 → 2^64, rFID", "rfid", paper_sign=-1, case="bsq-2^64", baseline="bsq-2^32")),
        "the tokenizer's seed pairs the runs; the same training budget for every vocabulary"),
    Finding(
        "F2", "LFQ memory explodes with bits, BSQ stays flat", "Infinity Tab.3",
        "training memory LFQ 37.6 GB at d = 16, 53.7 GB at d = 18, out of memory from d = 20; BSQ 32.4 GB flat to d = 64",
        BENCH, "bench",
        (Contrast("growth of log2(peak MiB) per bit, LFQ − BSQ", "peak_mb", kind="slope", paper_sign=+1,
                  case="lfq", baseline="bsq"),),
        "one training step of the quantizer alone on 4,096 tokens (the paper: the whole tokenizer); peak tensor "
        "memory is deterministic, so the interval is the least-squares slope's over the measured bit widths"),
    Finding(
        "F3", "bitwise head ≥ index head in gFID with far fewer parameters", "Infinity Tab.5",
        "at V = 2^16: index head 124M parameters, 2 GB, FID 4.49; bitwise (IVC) head 0.65M, 10 MB, FID 3.83",
        "head_index_vs_bitwise", "generator",
        (Contrast("bitwise − index, gFID", "gfid", paper_sign=-1, axis="head.name", case="bitwise", baseline="index",
                  within=("case",), where={"case": "bsq-*"}),
         Contrast("bitwise − index, head parameters", "head_params", paper_sign=-1, axis="head.name", case="bitwise",
                  baseline="index", within=("case",), where={"case": "bsq-*"})),
        "on the BSQ tokenizer (the VQ case of the suite asks another question); the paper's claim is ≥, so "
        "'undecided' with a small D also supports it"),
    Finding(
        "F4", "small models prefer the smaller vocabulary, large ones the larger", "Infinity Fig.9",
        "2^16 beats 2^32 for the 125M and 361M models; at 2.2B, 2^32 overtakes after ~40K iterations",
        "vocab_vs_model", "generator",
        (Contrast("(2^32 − 2^16) at the largest size − at the smallest, gFID", "gfid", kind="dod", paper_sign=-1,
                  axis="quantizer", case="bsq-32", baseline="bsq-16", over="generator.size"),
         Contrast("(2^16 − 2^10) at the largest size − at the smallest, gFID", "gfid", kind="dod", paper_sign=-1,
                  axis="quantizer", case="bsq-16", baseline="bsq-10", over="generator.size"),
         Contrast("(2^64 − 2^32) at the largest size − at the smallest, gFID", "gfid", kind="dod", paper_sign=-1,
                  axis="quantizer", case="bsq-64", baseline="bsq-32", over="generator.size")),
        "the interaction: a negative difference of differences means the larger vocabulary gains on the smaller "
        "one as the model grows (the trend towards a crossing). Where the crossing lies beyond `s`: "
        "`python -m lab run ablations/vocab_vs_model preset=gpu` (adds `m` and `l`, 2^64)"),
    Finding(
        "F5", "BSC beats no correction and flips without re-quantization", "Infinity Tab.7",
        "FID: no correction 9.76, random flips without re-quantization 9.69, flip + re-quantization (BSC) 3.48",
        "self_correction", "generator",
        (Contrast("BSC 0.3 − none, gFID", "gfid", paper_sign=-1, case="bsc-0.3", baseline="none"),
         Contrast("BSC 0.3 − flip 0.3 (no re-quantization), gFID", "gfid", paper_sign=-1, case="bsc-0.3",
                  baseline="flip-0.3")),
        "p_max = 0.3 as in Infinity's training script"),
    Finding(
        "F6", "flip strength 0.1-0.3 similar, 0.3 best", "Infinity Tab.8",
        "FID at p_max 0.1 / 0.2 / 0.3: 3.45 / 3.48 / 3.33 (differences of 0.12-0.15 FID)",
        "self_correction", "generator",
        # "similar" as an equivalence question. Margin: ±5 % of BSC 0.1's mean gFID. Tab.8 calls strengths
        # similar whose FIDs differ by 0.03-0.15 on 3.33-3.48, i.e. by up to 4.5 % of the FID: 5 % is that
        # largest "similar" difference rounded up. Relative, because the CPU suite's gFID (~50) and the paper's
        # (~3.4) are on different scales; the baseline's mean is estimated from the same runs and treated as fixed.
        (Contrast("BSC 0.3 − BSC 0.1, gFID, equivalence", "gfid", kind="equivalence", paper_sign=0, case="bsc-0.3",
                  baseline="bsc-0.1", margin=0.05, margin_of_baseline=True),
         Contrast("BSC 0.3 − BSC 0.1, gFID", "gfid", paper_sign=-1, case="bsc-0.3", baseline="bsc-0.1"),
         Contrast("BSC 0.3 − BSC 0.2, gFID", "gfid", paper_sign=-1, case="bsc-0.3", baseline="bsc-0.2")),
        "'similar' is decided by two one-sided tests on the seed-paired difference BSC 0.3 − BSC 0.1 against a "
        "margin of ±5 % of BSC 0.1's mean gFID (Tab.8's largest 'similar' difference, 4.5 %, rounded up); '0.3 "
        "best' by the directional contrasts, whose differences in the paper are far below any D a CPU suite can "
        "reach, so 'undecided' with D is their expected answer"),
    Finding(
        "F7", "validation loss correlates with the evaluation metrics", "Infinity Fig.10",
        "Pearson r ≈ -0.98 between validation loss and metrics where higher is better (the same direction as a "
        "positive r with gFID or KID, where lower is better)",
        "model_scaling", "generator",
        (Contrast("r(validation loss, gFID)", "gfid", kind="correlation", paper_sign=+1, other="val_loss"),
         Contrast("r(validation loss, KID)", "kid", kind="correlation", paper_sign=+1, other="val_loss")),
        "over the runs of the model ladder, per loss kind (bit BCE and index cross-entropy are never pooled); "
        "sign convention: gFID and KID are lower-is-better, so a positive r is Fig.10's direction"),
    Finding(
        "F8", "next-scale beats raster next-token in quality and speed", "VAR",
        "FID 5.22 next-scale vs 18.65 raster next-token, at about 1/77 of the inference cost",
        "order", "generator",
        (Contrast("raster − next-scale, gFID", "gfid", paper_sign=+1, axis="generator.order", case="raster",
                  baseline="scale"),
         Contrast("raster − next-scale, images/s at sampling", "sample_images_per_s", paper_sign=-1,
                  axis="generator.order", case="raster", baseline="scale"))),
    Finding(
        "F9", "index labels change far more often than bits under latent noise", "Infinity's motivation",
        "a small perturbation of the continuous latent changes the index label of a token while flipping few of "
        "its bits (no number given)",
        "head_index_vs_bitwise", "generator",
        (Contrast("VQ labels changed − BSQ bits flipped, noise 0.03 × RMS", "label_noise.0.03.index_change",
                  paper_sign=+1, case="vq-*", baseline="bsq-*", other="label_noise.0.03.bit_flip",
                  where={"head.name": "index"},
                  show=("label_noise.0.03.index_change", "label_noise.0.03.bits_moved_if_changed")),),
        "the same relative perturbation (Gaussian noise of 0.03 × the RMS of each tokenizer's own encoder "
        "features, every token of every scale of 512 validation images) given to the suite's VQ tokenizer and to "
        "its BSQ tokenizer of the same vocabulary: the fraction of tokens whose VQ label (the nearest code) changes "
        "against the fraction of BSQ bits that flip, i.e. the share of the label a softmax head and a bitwise head "
        "each see change; beside it, how often the BSQ label changes at all and how many bits it moves when it "
        "does (`label_noise.*` in lab/evaluation/label_noise.py). It can show whether, under the same relative noise, "
        "a VQ label is lost more often than a BSQ bit. It cannot show why, nor that it matters: the two "
        "tokenizers are trained separately (different latents, code geometry and usage), each once and shared by "
        "every seed, so the seeds repeat the measurement rather than replicate it and the interval says nothing "
        "about another tokenizer training; a VQ index has no bit structure (its bits moved are those of an "
        "arbitrary numbering); and what the labels' robustness does to generation is F3's question. (On one BSQ "
        "tokenizer, 'index changed' against 'bit flipped' holds by construction, so that is not the contrast.) "
        "One run per seed: the index-head runs, as the measurement is the tokenizer's"),
)
