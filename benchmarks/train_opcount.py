"""Kernels per training step: ATen ops dispatched by one forward+backward, dense vs soft-masked (+ SLoRB).

On a GPU a small model's training step is bound by kernel launches (benchmarks/README.md, "Training overhead":
the dense SmolLM2 step has 108 ms of kernels and ~200 ms of CPU dispatch), so the number of ops the mask
machinery adds is the overhead that matters there. Counting them is deterministic and runs anywhere:

    python benchmarks/train_opcount.py --layers 4
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
from transformers import AutoConfig, AutoModelForCausalLM

import sfcompile
from sfcompile.masking.forge import ForgeConfig, SparseForge
from sfcompile.opcount import OpCount


def count(model, ids) -> int:
    with OpCount(views=True) as c:
        model(ids, labels=ids).loss.backward()
    return c.n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--family", default="llama")
    args = ap.parse_args()
    cfg = AutoConfig.for_model(args.family, hidden_size=64, intermediate_size=128, num_hidden_layers=args.layers,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
    torch.manual_seed(0)
    dense = AutoModelForCausalLM.from_config(cfg)
    ids = torch.randint(0, 256, (2, 16))
    row = {"family": args.family, "layers": args.layers, "dense": count(dense, ids)}
    for name, slorb in (("masked", False), ("masked_slorb", True)):
        model = copy.deepcopy(dense)
        sfcompile.sparsify(model, "2:4")
        SparseForge(model, ForgeConfig(slorb=slorb), total_steps=1000)
        row[name] = count(model, ids)
        row[f"{name}_over_dense"] = row[name] / row["dense"]
    row["sites"] = len(sfcompile.masking.state.masked_sites(model))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
