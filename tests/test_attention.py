"""The transformer's attention kernel choice (lab/models/transformer.py ``attention``): the math kernel for bf16 on
a CPU (measured faster there: ``make bench`` part ``attention``), torch's own choice otherwise; the same attention
either way, up to the precision's rounding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from lab.models.transformer import Transformer, attention


def _inputs(dtype):
    mask = Transformer(latent_dim=8, scales=(1, 2, 3, 4, 6, 8), num_classes=10, size="xs").mask
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, mask.shape[0], 16, generator=g).to(dtype) for _ in range(3))
    return q, k, v, mask


def test_bf16_on_a_cpu_takes_the_math_kernel_and_matches_fp32_to_bf16_rounding():
    q, k, v, mask = _inputs(torch.bfloat16)
    with sdpa_kernel(SDPBackend.MATH):
        math = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ours = attention(q, k, v, mask)
    assert torch.equal(ours, math)
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    assert (ours.float() - exact).abs().max() < 0.05  # bf16 has 8 bits of mantissa; outputs are O(1)


def test_fp32_is_torchs_own_choice_and_the_mask_holds():
    q, k, v, mask = _inputs(torch.float32)
    assert torch.equal(attention(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    # block-causal: changing the last scale's keys and values leaves every earlier token's output unchanged
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -64:], v2[:, :, -64:] = 0, 0
    assert torch.allclose(attention(q, k2, v2, mask)[:, :, :-64], attention(q, k, v, mask)[:, :, :-64])


def test_gradients_flow_through_the_math_kernel():
    q, k, v, mask = (t.requires_grad_(True) if t.dtype.is_floating_point and t.dim() == 4 else t
                     for t in _inputs(torch.bfloat16))
    attention(q, k, v, mask).float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad.float()).all() for t in (q, k, v))
