#!/bin/bash
# call 2: assemble the model, start four training runs in their own sessions (they outlive this call)
C=/root/cache
cat $C/smol.part0 .carry/train/b/smol.part1 > $C/smol.gguf || exit 1
test "$(stat -c %s $C/smol.gguf)" = 98362432 || { echo "bad gguf size"; exit 1; }
zcat .carry/train/b/corpus.jsonl.gz > $C/corpus.jsonl
rm -rf $C/repo && mkdir -p $C/repo && cp -r sfcompile benchmarks pyproject.toml $C/repo/ && cp .carry/train/b/*.sh $C/
cd $C/repo
export PYTHONPATH=$C/repo:$C/site
W="--model $C/smol.gguf --wiki $C/wiki.jsonl --calib $C/corpus.jsonl --lrs= --lr 1e-3 --micro-batch 32 --budget-s 1500 --skip ablations,zeroshot"
mkdir -p $C/res
start() {  # name gpu args...
  local n=$1 g=$2; shift 2
  CUDA_VISIBLE_DEVICES=$g setsid nohup python benchmarks/train_h200.py $W --out $C/res/$n --work $C/w/$n "$@" \
      > $C/res/$n.log 2>&1 < /dev/null &
  echo "$n pid $!"
}
start mix8   0 --main-tokens 8e6  --evals 4 --teacher-mix 3e6 --teacher-batch 1024
start mix16  0 --main-tokens 16e6 --evals 4 --teacher-mix 6e6 --teacher-batch 1024
start base8  0 --main-tokens 8e6  --evals 4
start admm8  0 --main-tokens 8e6  --evals 4 --init admm
bash $C/wait.sh 540
