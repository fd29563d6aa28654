#!/usr/bin/env bash
# The H200 ×2 scale proof in one command: JSON lines to ${OUT:-.}/scale.jsonl, logs beside it.
#   (b) 1 -> 2 GPU scaling, qwen3-1.7b shape, same per-GPU batch (4 × 2048 tokens)
#   (a) FSDP2, Qwen3-8B-shaped blocks (hidden 4096, 16 of 36 layers: see benchmarks/README.md), teacher,
#       2:4 soft masks, Hessian (fd) probe with every mask update, activation checkpointing, 2 GPUs
#   (c) DeepSpeed ZeRO-3, qwen3-0.6b shape, 2 GPUs
# Every run trains 12 steps with a mask update (and its probe) every 4: plain and update steps are timed
# apart (benchmarks/scale_fsdp2.py). ONLY="b_scale_x1" runs the named runs only; SKIP="..." leaves them out.
# CPU check of every branch (gloo, tiny configs): SCALE_CPU=1 benchmarks/scale_h200x2.sh
set -u
OUTDIR=${OUT:-.}
J=$OUTDIR/scale.jsonl
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
if [ "${SCALE_CPU:-0}" = 1 ]; then
  COMMON="--device cpu --hidden 64 --seqlen 64 --steps 8 --period 3"; A="--layers 2"; B="--layers 2"; C="--layers 2"
  TA=300; TB=200; TC=200
else
  COMMON="--seqlen 2048 --steps 12 --period 4"; A="--model qwen3-8b --layers 16"
  B="--model qwen3-1.7b --micro-batch 4"; C="--model qwen3-0.6b"
  TA=${TA:-220}; TB=${TB:-110}; TC=${TC:-110}; export DS_ACCELERATOR=cuda
fi
run() {  # label timeout nproc args...
  local label=$1 t=$2 n=$3; shift 3
  case " ${SKIP:-} " in *" $label "*) return;; esac
  if [ -n "${ONLY:-}" ]; then case " $ONLY " in *" $label "*) ;; *) return;; esac; fi
  echo "== $label"
  timeout "$t" torchrun --standalone --nproc-per-node "$n" benchmarks/scale_fsdp2.py --label "$label" --out "$J" \
    "$@" >"$OUTDIR/$label.log" 2>&1
  echo "rc=$? $label"; tail -n 3 "$OUTDIR/$label.log"
}
run b_scale_x1 "$TB" 1 $COMMON $B
run b_scale_x2 "$TB" 2 $COMMON $B
run a_fsdp2_8b_x2 "$TA" 2 $COMMON $A --activation-checkpointing
run c_zero3_x2 "$TC" 2 $COMMON $C --engine deepspeed
