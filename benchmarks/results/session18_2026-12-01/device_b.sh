#!/bin/bash
# call B (eighteenth session): assemble the model and start the 50M-token compiled run in the background (it
# outlives the call); then wait and report. Recipe of the sixteenth session's f20 (ADMM masks, corpus + 8M
# teacher tokens, LR 1e-3) with the trainer's default exploration cap for 50M tokens (5M / 50M = 0.1), compiled.
C=/root/cache
cat $C/smol.part0 .carry/train/b/smol.part1 > $C/smol.gguf || exit 1
test "$(stat -c %s $C/smol.gguf)" = 98362432 || { echo "bad gguf size"; exit 1; }
zcat .carry/train/b/corpus.jsonl.gz > $C/corpus.jsonl
rm -rf $C/repo && mkdir -p $C/repo && cp -r sfcompile benchmarks pyproject.toml $C/repo/
cd $C/repo
export PYTHONPATH=$C/repo:$C/site PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True SFCOMPILE_CACHE=$C/shared
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32 --budget-s 1500"
W="$W --skip ablations,zeroshot --init admm --teacher-batch 2048 --main-tokens ${TOK:-50e6} --evals 5"
W="$W --teacher-mix 8e6 --main-forge finalize_at=${FIN:-0.1} --compile"
mkdir -p $C/res
setsid nohup python benchmarks/train_h200.py $W --out $C/res/r50 --work $C/w/r50 > $C/res/r50.log 2>&1 < /dev/null &
echo "started pid $! at $(date +%T)"
bash $C/repo/benchmarks/results/session18_2026-12-01/device_wait.sh ${WAIT:-560}
