"""The sampler's decoding attention kernel (`sfcompile.train.decode_attention_kernel`), interpreted on the CPU,
against its float64 reference."""

import pytest
import torch

from sfcompile.train.decode_attention_kernel import decode_attention, decode_attention_reference

CASES = [  # (B, H_kv, G, D, buffer positions, last position attended, block): G below, at and past 16 rows
    (2, 3, 3, 64, 40, 0, 16),     # the first decoding step: one position
    (2, 3, 3, 64, 40, 17, 16),    # a partial second block
    (1, 2, 4, 32, 130, 129, 64),  # the whole buffer, across blocks
    (3, 1, 1, 16, 20, 7, 16),     # one query row per head (no grouping)
    (1, 1, 17, 16, 24, 15, 16),   # more rows than 16: padded to 32
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,h,g,d,n,last,block", CASES)
def test_kernel_reads_up_to_the_position_and_matches_float64(b, h, g, d, n, last, block, dtype):
    gen = torch.Generator().manual_seed(n + last)
    q, k, v = (torch.randn(b, h, m, d, generator=gen).to(dtype) for m in (g, n, n))
    k[:, :, last + 1 :] = float("nan")  # past the position: never read (a read would turn the output NaN)
    v[:, :, last + 1 :] = float("nan")
    out = decode_attention(q, k, v, torch.tensor([last]), block_n=block)
    ref = decode_attention_reference(q, k, v, last)
    assert out.dtype == dtype and out.shape == q.shape
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    torch.testing.assert_close(out.double(), ref.double(), atol=tol, rtol=tol)


def test_a_window_of_a_larger_buffer_and_a_strided_query_are_read_by_their_strides():
    # the sampler hands the kernel its window (a slice of the buffer along positions) and the query heads of one
    # K/V head as a reshaped view
    gen = torch.Generator().manual_seed(0)
    keys, values = torch.randn(2, 2, 48, 16, generator=gen), torch.randn(2, 2, 48, 16, generator=gen)
    query = torch.randn(2, 1, 6, 16, generator=gen).transpose(1, 2)  # (B, H_q, 1, D) as transformers makes it
    packed = query.reshape(2, 2, 3, 16)
    out = decode_attention(packed, keys[:, :, :32], values[:, :, :32], torch.tensor([20]), scale=0.3)
    torch.testing.assert_close(out, decode_attention_reference(packed, keys, values, 20, scale=0.3))


def test_shapes_the_kernel_cannot_take_are_refused():
    q, kv = torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 8, 16)
    with pytest.raises(ValueError, match="expected"):
        decode_attention(q, torch.zeros(1, 3, 8, 16), torch.zeros(1, 3, 8, 16), torch.tensor([0]))
    with pytest.raises(ValueError, match="head dim 24"):
        decode_attention(torch.zeros(1, 2, 3, 24), torch.zeros(1, 2, 8, 24), torch.zeros(1, 2, 8, 24),
                         torch.tensor([0]))
    with pytest.raises(ValueError, match="unit stride"):
        decode_attention(q, kv.transpose(2, 3).contiguous().transpose(2, 3), kv, torch.tensor([0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_on_cuda_at_the_samplers_shape(dtype):
    # SmolLM2-135M's heads (3 K/V heads of 3 query rows, D = 64), a 512-position buffer, compiled for the GPU
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(64, 3, m, 64, generator=gen, device="cuda").to(dtype) for m in (3, 512, 512))
    for last in (0, 63, 64, 300, 511):
        out = decode_attention(q, k, v, torch.tensor([last], device="cuda"))
        ref = decode_attention_reference(q, k, v, last)
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(out.double(), ref.double(), atol=tol, rtol=tol)
