#!/bin/bash
# wait up to $1 seconds for the runs to finish, then bring back what they wrote so far
C=/root/cache; end=$((SECONDS + $1))
while [ $SECONDS -lt $end ]; do
  pgrep -f "train_h200.py|/ab.sh" > /dev/null || { echo "no run process"; break; }
  sleep 10
done
date +%T
for r in $(ls $C/res | grep -v '\.log$'); do
  echo "== $r"; tr '\r' '\n' < $C/res/$r.log | grep -v "it/s\]\|step/s\|^ *$" | tail -14 | cut -c1-300
  tr '\r' '\n' < $C/res/$r.log | grep "step/s" | tail -1
  mkdir -p $OUT/$r; cp $C/res/$r/*.jsonl $C/res/$r/*.png $C/res/$r.log $OUT/$r/ 2>/dev/null
  cp $C/w/$r/main/log.jsonl $OUT/$r/main_log_live.jsonl 2>/dev/null
done
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
