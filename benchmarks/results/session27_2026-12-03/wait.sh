#!/bin/bash
# wait up to $1 seconds for the runs that next_ab.sh started (their pid in /root/cache/ab.pid: no pgrep, which
# can match the waiting command itself), then bring back what they wrote so far as one tarball ($OUT/res.tgz:
# a call brings back at most 8 files) and print each run's summary
C=/root/cache; end=$((SECONDS + $1)); pid=$(cat $C/ab.pid 2>/dev/null)
while [ $SECONDS -lt $end ] && [ -n "$pid" ] && kill -0 $pid 2>/dev/null; do sleep 10; done
kill -0 "$pid" 2>/dev/null && echo "still running at $(date +%T)" || echo "done by $(date +%T)"
for log in $C/res/*.log; do
  r=$(basename $log .log); echo "== $r"
  tr '\r' '\n' < $log | grep -v "it/s\]\|step/s\|^ *$" | tail -8 | cut -c1-300
  tr '\r' '\n' < $log | grep "step/s" | tail -1
  test -f $C/w/$r/main/log.jsonl && cp $C/w/$r/main/log.jsonl $C/res/$r/main_log_live.jsonl
done
tar -czf $OUT/res.tgz -C $C res
ls -la $OUT
nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
