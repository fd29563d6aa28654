"""Host time of a compiled training forward + backward: dense vs soft-masked vs soft-masked + SLoRB.

A 30-layer LLaMA (SmolLM2-135M's depth and its 210 masked sites) at a tiny width, so that the kernels cost
next to nothing and what is timed is what the host does per step: Dynamo's guards, AOTAutograd's runtime
wrappers and Inductor's generated wrapper over every graph input, and the kernel calls. A training step on a
GPU that is launch-bound pays this time on top of its kernels (benchmarks/README.md, "Training overhead":
the compiled masked step of SmolLM2-135M costs 1.41x the dense one on an H200).

    python benchmarks/train_host_overhead.py [--layers 30] [--rounds 20] [--backend inductor]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import sfcompile
from sfcompile.masking.forge import ForgeConfig, SparseForge


def _time(model, ids, rounds: int, backend: str) -> dict:
    fn = torch.compile(model, backend=backend)
    fn(ids, use_cache=False).logits.float().square().mean().backward()  # compile forward and backward
    fwd, bwd = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        loss = fn(ids, use_cache=False).logits.float().square().mean()
        t1 = time.perf_counter()
        loss.backward()
        fwd.append(t1 - t0)
        bwd.append(time.perf_counter() - t1)
    graph_inputs = sum(1 for _ in model.parameters()) + sum(1 for _ in model.buffers())
    return {"fwd_ms": statistics.median(fwd) * 1e3, "bwd_ms": statistics.median(bwd) * 1e3,
            "params_and_buffers": graph_inputs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=args.layers,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_config(cfg)
    masked = copy.deepcopy(dense)
    sfcompile.sparsify(masked, pattern="2:4")
    with_slorb = copy.deepcopy(masked)
    SparseForge(with_slorb, ForgeConfig(), total_steps=1000)  # installs the SLoRB bypass on every site
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    rows = {}
    for name, model in (("dense", dense), ("masked", masked), ("masked+slorb", with_slorb)):
        rows[name] = _time(model, ids, args.rounds, args.backend)
        r = rows[name]
        print(f"{name:13s} forward {r['fwd_ms']:6.2f} ms  backward {r['bwd_ms']:6.2f} ms  "
              f"({r['params_and_buffers']} parameters and buffers)", flush=True)
    base = rows["dense"]["fwd_ms"] + rows["dense"]["bwd_ms"]
    for r in rows.values():
        r["vs_dense"] = (r["fwd_ms"] + r["bwd_ms"]) / base
    print(json.dumps({"layers": args.layers, "backend": args.backend, "torch": torch.__version__, **rows}))


if __name__ == "__main__":
    main()
