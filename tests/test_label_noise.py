"""F9's measurement (``lab.evaluation.label_noise.label_moves`` / ``label_noise_sensitivity``) on a hand-made
latent where the answer is known: a VQ codebook and a BSQ quantizer of the same 2 bits whose cells are the same four
quadrants, and perturbations that cross a known number of cell boundaries."""
from __future__ import annotations

import pytest
import torch

from lab.evaluation.label_noise import LABEL_NOISE_KEYS, label_moves, label_noise_sensitivity
from lab.quantizers.bsq import BSQ
from lab.quantizers.vq import VQ

# VQ codes at the quadrants' centres, numbered so that a label's bits say nothing about the geometry:
# (+,+) = 0, (-,+) = 1 (01), (-,-) = 2 (10), (+,-) = 3 (11)
CODEBOOK = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
# four tokens at (0.5, 0.5) and the perturbation each gets: none, across x = 0 (one boundary), across both axes
# (two boundaries), and a move that stays in the quadrant
TOKENS = torch.tensor([[0.5, 0.5]] * 4)
MOVES = torch.tensor([[0.0, 0.0], [-1.0, 0.0], [-1.0, -1.0], [0.3, 0.2]])


def latent(points: torch.Tensor) -> torch.Tensor:
    return points.T.reshape(1, 2, 1, -1).contiguous()  # (B=1, C=2, h=1, w=tokens)


def quadrant_vq() -> VQ:
    vq = VQ(dim=2, codebook_size=4, code_dim=None, use_cosine_sim=False, kmeans_init=False).eval()
    vq.vq.codebook = CODEBOOK.clone()
    return vq


def quadrant_bsq() -> BSQ:
    return BSQ(dim=2, bits=2).eval()  # projections are identities at dim = bits: a bit is the sign of a channel


def moves(q, before: torch.Tensor, after: torch.Tensor) -> dict:
    with torch.no_grad():
        return label_moves([q(latent(before)).codes], [q(latent(after)).codes], q.code_kind, q.bits)


def test_the_quantizers_see_the_quadrants():
    vq, bsq = quadrant_vq(), quadrant_bsq()
    pts = torch.tensor([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]])
    with torch.no_grad():
        assert vq(latent(pts)).codes.flatten().tolist() == [0, 1, 2, 3]
        assert bsq(latent(pts)).codes.reshape(-1, 2).tolist() == [[1, 1], [0, 1], [0, 0], [1, 0]]


def test_a_perturbation_across_known_boundaries():
    vq, bsq = quadrant_vq(), quadrant_bsq()
    b = moves(bsq, TOKENS, TOKENS + MOVES)
    # BSQ: 2 of 4 labels change; 0 + 1 + 2 + 0 = 3 of 8 bits flip; a changed label moves 1.5 bits on average
    assert b == pytest.approx({"index_change": 0.5, "bit_flip": 3 / 8, "bits_moved": 3 / 4,
                               "bits_moved_if_changed": 1.5, "bits": 2.0})
    v = moves(vq, TOKENS, TOKENS + MOVES)
    # VQ: the same two labels change (the same cells); their indices move 0 -> 1 and 0 -> 2, one bit each in
    # this numbering: bits of a VQ index measure the numbering, not the distance
    assert v == pytest.approx({"index_change": 0.5, "bit_flip": 2 / 8, "bits_moved": 2 / 4,
                               "bits_moved_if_changed": 1.0, "bits": 2.0})
    assert set(b) == set(v) == set(LABEL_NOISE_KEYS)


def test_no_change_and_scales_pool_by_token():
    bsq = quadrant_bsq()
    assert moves(bsq, TOKENS, TOKENS + MOVES[[0, 3, 0, 3]])["bits_moved_if_changed"] is None
    clean = [torch.zeros(1, 1, 1, 2), torch.zeros(1, 2, 2, 2)]  # a 1x1 and a 2x2 scale: 5 tokens
    moved = [torch.ones(1, 1, 1, 2), torch.zeros(1, 2, 2, 2)]    # the 1x1 token moves both bits
    assert label_moves(clean, moved, "bits", 2) == pytest.approx(
        {"index_change": 1 / 5, "bit_flip": 2 / 10, "bits_moved": 2 / 5, "bits_moved_if_changed": 2.0, "bits": 2.0})


def test_the_same_noise_changes_the_same_labels_when_the_cells_agree():
    """Gaussian noise of sigma x RMS, drawn with the same seed for both tokenizers: with the same cells the VQ
    label changes exactly where the BSQ label does, and a changed BSQ label moves 1 or 2 bits."""
    f = latent(torch.randn(64, 2, generator=torch.Generator().manual_seed(1)))
    vq, bsq = quadrant_vq(), quadrant_bsq()
    v = label_noise_sensitivity(vq, f, [0.0, 0.3, 1.0], seed=3)
    b = label_noise_sensitivity(bsq, f, [0.0, 0.3, 1.0], seed=3)
    assert v["0"]["index_change"] == b["0"]["index_change"] == 0.0
    for s in ("0.3", "1"):
        assert v[s]["index_change"] == b[s]["index_change"] > 0
        assert 1.0 <= b[s]["bits_moved_if_changed"] <= 2.0
        assert b[s]["bit_flip"] == pytest.approx(b[s]["bits_moved"] / 2)
    assert b["1"]["index_change"] > b["0.3"]["index_change"]
