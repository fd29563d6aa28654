#!/bin/bash
# call 1 (twentieth session; carry .carry/train/a): cache the model's first part for call 2, then time what the
# eighteenth session built but could not time: the loss kernel against the chunked loss, the packed sampler
# against generate, the trainer's compiled step with each loss. Each output also kept in /root/cache/m1 for call 2.
C=/root/cache; mkdir -p $C/site $C/m1
cp .carry/train/a/smol.part0 .carry/train/a/wiki.jsonl $C/ && \
  pip install -q --no-deps --target $C/site .carry/train/a/gguf-*.whl 2>&1 | tail -1
export PYTHONPATH=$PWD:$C/site
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
python -m pytest -q tests/train/test_losses.py tests/train/test_sampler.py -k "cuda or hopper" 2>&1 | tail -3
python benchmarks/loss_memory.py --batch 32 --seqlen 512 --vocab 49152 --dtype bf16 --device cuda \
  --variants whole,fused,kernel --out $OUT/loss_kernel_cuda.jsonl 2>&1 | grep -v Warning | tail -4
python benchmarks/teacher_sampling.py --batch 2048 --seqlen 512 --reps 2 \
  --variants dynamic+half,packed+half,packed-graph+half --budget-s 200 --out $OUT/sampling.jsonl 2>&1 \
  | grep -v Warning | tail -3
cp $OUT/*.jsonl $C/m1/
for k in torch triton; do
  python benchmarks/train_profile.py --what train --compile --loss-kernel $k --out $OUT/profile.jsonl \
    --work /tmp/tp_$k > $OUT/profile_train_$k.txt 2>&1; tail -c 600 $OUT/profile_train_$k.txt
done
cp $OUT/*.jsonl $C/m1/; ls $C
