"""The sampler's Triton decoding attention compiled for sm_90 on a machine without a GPU
(`sfcompile.lowering.kernels.offline`), bf16 and fp32, SmolLM2-135M's heads (G = 3 rows padded to 16, D = 64),
with the alignment facts a launch on the sampler's buffers gives: registers, spills and the load / MMA
instructions in the SASS. Run from the repo root:

    .venv/bin/python benchmarks/results/session26_2026-12-03/compile_decode_attention.py
"""

import triton

from sfcompile.lowering.kernels import offline
from sfcompile.train.decode_attention_kernel import _decode_attention_kernel as k

ptr = {"pos_ptr": "*i64", "scale": "fp32"}
for ieee, dt in ((False, "*bf16"), (True, "*fp32")):
    p = {**ptr, **{n: dt for n in ("q_ptr", "k_ptr", "v_ptr", "o_ptr")}}
    config = triton.Config({"BLOCK_N": 64}, num_warps=4, num_stages=3)  # the launch's: NUM_WARPS, default stages
    c = offline.compile_for(k, config, {"G": 3, "G_PAD": 16, "D": 64, "IEEE": ieee}, pointers=p, aligned=True)
    print(dt, offline.resources(c))
    ops = offline.opcode_counts(offline.sass(c))
    print({o: n for o, n in ops.items() if o.startswith(("LDG", "HMMA", "MMA", "LDS"))})
