"""Memory attribution for benchmarks/scale_fsdp2.py: per-phase peaks and the allocations live at the peak.

    MEMPROBE_HISTORY=1 torchrun --standalone --nproc-per-node 2 benchmarks/memory_phases.py --engine deepspeed \\
        --model qwen3-0.6b --seqlen 2048 --steps 12 --period 4 --out $OUT/ds.jsonl      # (scale_fsdp2.py flags)

Runs scale_fsdp2.main() with the CUDA allocator's history recorded on local rank 0, and phase markers around
the trainer's phases. At the end rank 0 replays the alloc/free trace, finds the peak of allocated bytes, the
phase it fell in, and groups the blocks live at the peak by the allocating frames. Per-phase peaks too.
"""

import collections
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "train"))

LOCAL = int(os.environ.get("LOCAL_RANK", "0"))
RECORD = LOCAL == 0 and torch.cuda.is_available() and os.environ.get("MEMPROBE_HISTORY", "0") == "1"
STACK: list[str] = []
SEGMENTS: list[dict] = []  # label, peak (max_memory_allocated within), start allocated
_last = {"label": "startup", "t": time.time()}
_marker_id = [0]


def _phase_marker(label: str) -> None:
    # a tiny allocation whose frame name marks the phase boundary in the allocator trace
    _marker_id[0] += 1
    MARKS.append(label)
    x = torch.empty(512 * (1 + (_marker_id[0] % 7)), dtype=torch.uint8, device="cuda")
    del x


MARKS: list[str] = []
MODS: dict = {}


def _flush(next_label: str) -> None:
    if not torch.cuda.is_available():
        return
    torch.cuda.synchronize()
    SEGMENTS.append({"label": _last["label"], "peak": torch.cuda.max_memory_allocated(),
                     "end_alloc": torch.cuda.memory_allocated()})
    torch.cuda.reset_peak_memory_stats()
    _last["label"] = next_label
    if RECORD:
        _phase_marker(next_label)


def phase(name):
    def deco(fn):
        @functools.wraps(fn)
        def inner(*a, **k):
            parent = "/".join(STACK)
            STACK.append(name)
            _flush("/".join(STACK))
            try:
                return fn(*a, **k)
            finally:
                STACK.pop()
                _flush((parent + "/" if parent else "") + f"after:{name}")
        return inner
    return deco


def install():
    import sfcompile.masking.forge as forge
    import sfcompile.masking.hutchinson as hut
    import sfcompile.train.distributed as dist
    import sfcompile.train.engines.deepspeed as eds
    import sfcompile.train.loop as loop

    eds.Stepper.backward = phase("backward")(eds.Stepper.backward)
    eds.Stepper.grad_norm = phase("grad_norm")(eds.Stepper.grad_norm)
    eds.Stepper.step = phase("step")(eds.Stepper.step)
    dist.Stepper.backward = phase("backward")(dist.Stepper.backward)
    dist.Stepper.step = phase("step")(dist.Stepper.step)
    forge.SparseForge.probe = phase("probe")(forge.SparseForge.probe)
    forge.SparseForge.after_step = phase("after_step")(forge.SparseForge.after_step)
    hut.zero3_grads = phase("full_grads")(hut.zero3_grads)
    hut.fd_hessian_vector = phase("fd")(hut.fd_hessian_vector)
    loop._evaluate = phase("evaluate")(loop._evaluate)
    def _init(orig):
        @functools.wraps(orig)
        def inner(*a, **k):
            engine = orig(*a, **k)
            MODS["student"] = engine.module
            MODS["engine"] = engine
            engine.forward = phase("student_fwd")(engine.forward)
            return engine
        return inner

    def _wt(orig):
        @functools.wraps(orig)
        def inner(*a, **k):
            t = orig(*a, **k)
            MODS["teacher"] = t
            t.forward = phase("teacher_fwd")(t.forward)
            return t
        return inner

    eds.initialize = phase("ds_initialize")(_init(eds.initialize))
    eds.wrap_teacher = phase("ds_wrap_teacher")(_wt(eds.wrap_teacher))
    dist.attach_optimizer = phase("attach_optimizer")(dist.attach_optimizer)
    def _gath(orig):
        @functools.wraps(orig)
        def inner(*a, **k):
            if int(os.environ.get("RANK", "0")) == 0:
                from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
                eng = MODS.get("engine")
                if eng is not None:
                    c = eng.optimizer.parameter_offload.get_param_coordinator()
                    print("TRACE complete", c.is_complete_trace(), "record", c.is_record_trace(), flush=True)
                for name, mod in MODS.items():
                    if name == "engine":
                        continue
                    ps = [p for p in mod.parameters() if getattr(p, "ds_status", None) == ZeroParamStatus.AVAILABLE]
                    st = {}
                    for p in ps:
                        if p.numel():
                            st[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
                    print(f"GATHERED {'/'.join(STACK)} {name}: {len(ps)} params, "
                          f"{sum(p.numel() for p in ps) / 1e6:.1f}M numel, "
                          f"{sum(st.values()) / 2**30:.3f} GiB in {len(st)} storages", flush=True)
            return orig(*a, **k)
        return inner

    loop.distillation_loss = phase("loss")(_gath(loop.distillation_loss))


def _key(frames, depth=4):
    keep = []
    for f in frames:
        fn = f.get("filename", "")
        if any(s in fn for s in ("sfcompile/", "/deepspeed/", "transformers/", "memory_phases", "torch/nn/",
                                 "torch/utils/checkpoint", "torch/autograd", "torch/optim")):
            short = fn.split("site-packages/")[-1].split("/main/")[-1]
            keep.append(f"{short}:{f.get('line')}:{f.get('name')}")
        if len(keep) >= depth:
            break
    return " <- ".join(keep) if keep else "?"


def analyse(snapshot, out_dir):
    traces = snapshot["device_traces"][torch.cuda.current_device()]
    live = {}
    cur = 0
    peak, peak_i = -1, -1
    label = "startup"
    labels_at = []
    seg_peaks = collections.OrderedDict()
    # first pass: find the peak
    for i, e in enumerate(traces):
        a = e["action"]
        if a == "alloc":
            if any(f.get("name") == "_phase_marker" for f in e["frames"][:6]):
                label = MARKS[len(labels_at)] if len(labels_at) < len(MARKS) else "?"
                labels_at.append(i)
                continue
            live[e["addr"]] = (e["size"], i)
            cur += e["size"]
            seg_peaks[label] = max(seg_peaks.get(label, 0), cur)
            if cur > peak:
                peak, peak_i, peak_label = cur, i, label
        elif a == "free_requested":
            s = live.pop(e["addr"], None)
            if s is not None:
                cur -= s[0]
    # second pass: the live set at the peak
    live = {}
    for i, e in enumerate(traces[: peak_i + 1]):
        a = e["action"]
        if a == "alloc":
            if any(f.get("name") == "_phase_marker" for f in e["frames"][:6]):
                continue
            live[e["addr"]] = (e["size"], i)
        elif a == "free_requested":
            live.pop(e["addr"], None)
    groups = collections.defaultdict(lambda: [0, 0])
    groups2 = collections.defaultdict(lambda: [0, 0])
    for size, i in live.values():
        fr = traces[i]["frames"]
        k = _key(fr, 5)
        groups[k][0] += size
        groups[k][1] += 1
        groups2[_key(fr, 2)][0] += size
        groups2[_key(fr, 2)][1] += 1
    top = sorted(groups.items(), key=lambda kv: -kv[1][0])[:70]
    top2 = sorted(groups2.items(), key=lambda kv: -kv[1][0])[:40]
    res = {
        "trace_events": len(traces),
        "peak_gib_from_trace": peak / 2**30,
        "peak_label": peak_label,
        "peak_event_index": peak_i,
        "max_alloc_gib_overall": max(s["peak"] for s in SEGMENTS) / 2**30 if SEGMENTS else None,
        "segment_peaks_trace_gib": {k: round(v / 2**30, 3) for k, v in seg_peaks.items()},
        "live_at_peak_by_frames5": [(k, round(v[0] / 2**30, 4), v[1]) for k, v in top],
        "live_at_peak_by_frames2": [(k, round(v[0] / 2**30, 4), v[1]) for k, v in top2],
    }
    return res


def main():
    if RECORD:
        torch.cuda.memory._record_memory_history(max_entries=3_000_000, stacks="python")
    install()
    import scale_fsdp2

    sys.argv = ["scale_fsdp2.py"] + sys.argv[1:]
    orig_shutdown = None
    import sfcompile.train.distributed as dist
    orig_shutdown = dist.shutdown
    dist.shutdown = lambda: None
    try:
        scale_fsdp2.main()
    finally:
        _flush("end")
    out = Path(os.environ.get("OUT", "/tmp"))
    summary = {"segments": [{"label": s["label"], "peak_gib": round(s["peak"] / 2**30, 3),
                             "end_gib": round(s["end_alloc"] / 2**30, 3)} for s in SEGMENTS]}
    # the per-label max over all steps
    per = collections.OrderedDict()
    for s in SEGMENTS:
        per[s["label"]] = max(per.get(s["label"], 0), s["peak"])
    summary["per_label_peak_gib"] = {k: round(v / 2**30, 3) for k, v in per.items()}
    if RECORD:
        snap = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        summary["analysis"] = analyse(snap, out)
    rank = int(os.environ.get("RANK", "0"))
    (out / f"mem_rank{rank}.json").write_text(json.dumps(summary, indent=1))
    if rank == 0:
        print(json.dumps({"per_label_peak_gib": summary["per_label_peak_gib"]}, indent=1))
        print("SEGMENTS " + " | ".join(f"{s['label']}:{s['peak_gib']}/{s['end_gib']}" for s in summary["segments"]))
        if "analysis" in summary:
            an = summary["analysis"]
            print("PEAK", an["peak_gib_from_trace"], an["peak_label"], an["max_alloc_gib_overall"])
            for k, g, n in an["live_at_peak_by_frames2"][:40]:
                print(f"{g:8.3f} GiB {n:6d}  {k}")
    orig_shutdown()


if __name__ == "__main__":
    main()
