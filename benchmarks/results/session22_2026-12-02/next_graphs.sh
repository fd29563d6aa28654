#!/bin/bash
# Superseded, never run: this script's three steps needed up to 900 s in one device call, past the 600 s limit.
# The same check as two calls: benchmarks/results/session24_2026-12-02/next_graphs.sh (its header says how).
echo "superseded: bash benchmarks/results/session24_2026-12-02/next_graphs.sh test default, then ... reduce-overhead" >&2
exit 2
