#!/bin/bash
# wait up to $1 seconds for run r50 to finish, then bring back what it wrote so far
C=/root/cache; end=$((SECONDS + $1))
while [ $SECONDS -lt $end ]; do
  grep -q '"phase": "done"' $C/res/r50/results.jsonl 2>/dev/null && break
  pgrep -f "train_h200.py" > /dev/null || { echo "no run process"; break; }
  sleep 10
done
date +%T; tr '\r' '\n' < $C/res/r50.log | grep -v "it/s\]\|step/s" | tail -25
tr '\r' '\n' < $C/res/r50.log | grep "step/s" | tail -2
mkdir -p $OUT/r50; cp $C/res/r50/*.jsonl $C/res/r50/*.png $C/res/r50.log $OUT/r50/ 2>/dev/null
cp $C/w/r50/main/log.jsonl $OUT/r50/main_log_live.jsonl 2>/dev/null; ls $OUT/r50
