#!/usr/bin/env bash
# The WordNet check of "residuals help Adam (and SGDm) too" (NOT PPI): every optimizer x seed, as
# two trainings per seed (Adam and its residual views; SGDm and RSGDm-scale), each view in
# $runs/<training>/<seed>/<name>/.
# Usage: bash examples/graph/run_wordnet.sh [RUNS_DIR] [SEEDS...]
# Needs Debian's wordnet-base (/usr/share/wordnet). Runs are resumable: rerunning skips finished
# epochs. Seed-major order, so a run stopped early still has every optimizer for the first seeds.
set -euo pipefail
runs=${1:-/tmp/graph_runs}
mkdir -p "$runs"
shift || true
seeds=("${@:-0 1 2}")
python=${PYTHON:-python}
data=/tmp/wordnet_graph
[ -f "$data/wordnet-noun-G.json" ] || "$python" -m examples.graph.wordnet --out_dir="$data"
for seed in ${seeds[@]}; do
  for spec in adam,adam-scale,adam-sign,adam-topk:0.005 sgdm,rsgdm-scale:0.1; do
    optimizer=${spec%%:*}
    lr=${spec##*:}
    name=views-${optimizer%%,*}
    "$python" -m examples.graph.main --config=examples/graph/configs/wordnet.py \
      --config.optimizer="$optimizer" --config.learning_rate="$lr" --config.seed="$seed" \
      --config.data_dir="$data" --workdir="$runs/$name/$seed" > "$runs/$name-$seed.log" 2>&1 \
      || echo "run $name seed $seed failed: see $runs/$name-$seed.log"
  done
done
"$python" -m examples.graph.report --runs="$runs" --out_dir="$runs/report" \
  --title="Cluster-GCN on WordNet nouns (NOT PPI)"
