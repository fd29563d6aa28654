#!/bin/bash
# wait up to $1 s (or until every run is done), then report progress and copy what exists to $OUT
C=/root/cache; end=$((SECONDS + $1))
while [ $SECONDS -lt $end ] && pgrep -f train_h200.py > /dev/null; do sleep 10; done
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
ls -la $C/shared/shards 2>/dev/null | tail -4
for n in f20 f20d; do
  echo "== $n"; tail -c 600 $C/res/$n.log | tr '\r' '\n' | tail -3
  grep -h "\"ppl\"" $C/w/$n/main/log.jsonl 2>/dev/null | tail -2 | cut -c1-200; tail -1 $C/w/$n/main/log.jsonl 2>/dev/null | cut -c1-300
  mkdir -p $OUT/$n; cp $C/res/$n/* $OUT/$n/ 2>/dev/null; cp $C/res/$n.log $OUT/$n/ 2>/dev/null
  cp $C/w/$n/main/log.jsonl $OUT/$n/main_log_partial.jsonl 2>/dev/null
done
pgrep -af train_h200.py | cut -c1-200
