#!/usr/bin/env bash
# docs/results.md's mnist5k table, every stage in order (each stage keeps what is done: rerun to continue).
# Usage: bash bench/results_table.sh [python]   (about 2 hours on 2 CPU cores)
set -euo pipefail
PY=${1:-python}
B="$PY bench/results_mnist5k.py"
$B table-experts --num-experts 5 --epochs 8
for ipc in 1 10 40; do $B table-distill --method dm --ipc $ipc --seeds 0 1 2; done
$B table-eval --num-eval 3
for ipc in 1 10 40; do $B table-distill --method dsa --ipc $ipc --seeds 0 1 2; done
$B table-eval --num-eval 3
for m in mtt selmatch; do
  $B table-distill --method $m --ipc 1 --seeds 0 1 2 --lr-img 1000 --syn-steps 10 --iterations 150
  for ipc in 10 40; do
    $B table-distill --method $m --ipc $ipc --seeds 0 1 2 --lr-img 1000 --syn-steps 10 --iterations 100
  done
done
$B table-eval --num-eval 3
$B table-crossarch --eval-epochs 100 --seeds 0
$B table-coverage
