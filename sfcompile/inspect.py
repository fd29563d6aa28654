"""`sfcompile inspect FOLDER`: check every site of a saved model against its manifest, without building it.

Reads ``sparsity.json`` and the safetensors shards directly (or the compressed file of a folder saved with
``packed=True``, unpacking one site at a time), verifies each listed weight's pattern, and prints per-site
sparsity and sizes (dense bytes against the bytes of the packed form), and the SLoRB bypass a trained model
carries (its S: group sums → outputs, read beside each packed weight at inference) or that it carries none.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors import safe_open

from sfcompile.export import MANIFEST_FILE, PACKED_FILE
from sfcompile.patterns import NM, Block, Pattern, parse_pattern


def packed_bytes(pattern: Pattern, shape: tuple[int, ...], itemsize: int) -> int:
    """Bytes of the packed form of a weight: kept values + index metadata (2 bits per kept 2:4 value,
    a 4-byte column index per kept block-16 tile plus row pointers)."""
    numel = 1
    for s in shape:
        numel *= s
    if isinstance(pattern, NM):
        bits_per_index = max(1, (pattern.m - 1).bit_length())
        kept = numel * pattern.n // pattern.m
        return kept * itemsize + (kept * bits_per_index + 7) // 8
    if isinstance(pattern, Block):
        tiles = numel // (pattern.size * pattern.size)
        kept = pattern.keep_tiles(tiles)
        return kept * pattern.size * pattern.size * itemsize + 4 * kept + 4 * (shape[-2] // pattern.size + 1)
    return numel * itemsize  # unstructured: no packed kernel format, stays dense


def _tensor_reader(folder: Path):
    """``name -> dense tensor or None`` over a saved folder's weights: its safetensors shards, or for a folder
    saved with ``packed=True`` its packed file (sites unpacked when asked for)."""
    if (folder / PACKED_FILE).is_file():
        from sfcompile.lowering.pack import PackedWeight, load_packed

        stored = load_packed(folder / PACKED_FILE, dense=False)

        def unpacked(name: str):
            value = stored.get(name)
            return value.unpack() if isinstance(value, PackedWeight) else value

        return unpacked
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder}")
    where = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for key in h.keys():
                where[key] = f

    def read(name: str):
        if name not in where:
            return None
        with safe_open(str(where[name]), framework="pt") as h:
            return h.get_tensor(name)

    return read


def inspect_folder(folder: str | Path) -> tuple[list[dict], dict]:
    """Per-site rows and a totals dict for a saved model folder."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass the output folder of `sfcompile prune/train`")
    if not manifest_path.exists():
        raise FileNotFoundError(f"{folder} has no {MANIFEST_FILE}: it is not a model hardened by sfcompile")
    manifest = json.loads(manifest_path.read_text())
    read = _tensor_reader(folder)
    rows = []
    for name, entry in manifest["sites"].items():
        weight = read(name)
        if weight is None:
            rows.append({"site": name, "pattern": entry["pattern"], "ok": False, "violations": -1,
                         "sparsity": float("nan"), "shape": tuple(entry["shape"]), "dense_bytes": 0,
                         "packed_bytes": 0, "error": "missing from the weights"})
            continue
        pattern = parse_pattern(entry["pattern"])
        ok, violations = pattern.verify(weight, entry["k_dim"])
        rows.append({"site": name, "pattern": str(pattern), "ok": ok, "violations": violations,
                     "sparsity": float((weight == 0).float().mean()), "shape": tuple(weight.shape),
                     "dense_bytes": weight.numel() * weight.element_size(),
                     "packed_bytes": packed_bytes(pattern, tuple(weight.shape), weight.element_size())})
    dense = sum(r["dense_bytes"] for r in rows)
    packed = sum(r["packed_bytes"] for r in rows)
    totals = {"sites": len(rows), "ok": sum(r["ok"] for r in rows), "dense_bytes": dense, "packed_bytes": packed,
              "packed_ratio": packed / dense if dense else float("nan"), "pattern": manifest.get("pattern")}
    return rows, {**totals, **_bypass_totals(manifest.get("slorb") or {}, read)}


def _bypass_totals(slorb: dict, read) -> dict:
    """``bypass_sites``, ``bypass_groups`` (the group sizes used) and ``bypass_bytes`` (S, and P where trained,
    as stored) of a manifest's SLoRB entries."""
    nbytes, groups = 0, set()
    for module, info in slorb.items():
        groups.add(int(info["group"]))
        for name in ("slorb_S", "slorb_P") if info.get("train_p") else ("slorb_S",):
            t = read(f"{module}.{name}")
            if t is None:
                raise FileNotFoundError(f"the manifest lists a SLoRB bypass on {module}, but {module}.{name} is "
                                        "missing from the weights: the folder is incomplete")
            nbytes += t.numel() * t.element_size()
    return {"bypass_sites": len(slorb), "bypass_groups": sorted(groups), "bypass_bytes": nbytes}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a model folder written by sfcompile (has sparsity.json)")
    parser.add_argument("--all", action="store_true", help="print every site (default: first 10 and failures)")


def run(args) -> int:
    rows, totals = inspect_folder(args.folder)
    print(f"{'site':<60} {'pattern':<14} {'shape':<16} {'sparsity':>8}  check")
    shown = rows if args.all else [r for i, r in enumerate(rows) if i < 10 or not r["ok"]]
    for r in shown:
        check = "ok" if r["ok"] else (r.get("error") or f"{r['violations']} violations")
        shape = "x".join(map(str, r["shape"]))
        print(f"{r['site']:<60} {r['pattern']:<14} {shape:<16} {r['sparsity']:>8.3f}  {check}")
    if len(shown) < len(rows):
        print(f"... {len(rows) - len(shown)} more sites, all ok (--all to list)")
    mib = 1 << 20
    print(f"\n{totals['ok']}/{totals['sites']} sites hold pattern {totals['pattern']}; sparse weights "
          f"{totals['dense_bytes'] / mib:.1f} MiB dense -> {totals['packed_bytes'] / mib:.1f} MiB packed "
          f"({totals['packed_ratio']:.2f}x)")
    if totals["bypass_sites"]:
        groups = "/".join(map(str, totals["bypass_groups"]))
        print(f"SLoRB bypass on {totals['bypass_sites']} sites (group {groups}): {totals['bypass_bytes'] / mib:.1f} "
              f"MiB more, read at every decode step ({totals['bypass_bytes'] / totals['packed_bytes']:.2f}x the "
              "packed sites' bytes)")
    else:
        print("no SLoRB bypass")
    return 0 if totals["ok"] == totals["sites"] else 1
