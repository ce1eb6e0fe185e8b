"""The report's tables from hand-made runs, and the unigram floor against a direct count."""

import json
import math

import numpy as np
import pytest

from examples.transformer_lm import report


def _training(root, seed, curves):
  """A training folder: one view folder per name, its config and one record per evaluation."""
  training = root / f"seed_{seed}"
  for name, ppls in curves.items():
    folder = training / name
    folder.mkdir(parents=True)
    config = {"optimizer": name, "seed": seed, "views": list(curves), "data_source": "x"}
    (folder / "config.json").write_text(json.dumps(config))
    records = [
      {"epoch": e, "step": 10 * (e + 1), "val_ppl": p, "val_loss": math.log(p)}
      for e, p in enumerate(ppls)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(training)


def test_tables_hold_the_best_per_third_and_the_paired_changes(tmp_path):
  trainings = [
    _training(tmp_path, 0, {"adamw": [400, 300, 250, 200, 190, 180], "adamw-sign": [380, 290, 245, 201, 189, 181]}),
    _training(tmp_path, 1, {"adamw": [420, 310, 260, 210, 200, 190], "adamw-sign": [390, 300, 262, 205, 199, 188]}),
  ]  # fmt: skip
  table = report.make_tables(report.find_views(trainings), unigram=700.0)
  # Thirds of 6 evaluations: 0-1, 2-3, 4-5 (steps 10-20, 30-40, 50-60); the best is the lowest.
  assert "| view | early (steps 10-20) | mid (steps 30-40) | late (steps 50-60) |" in table
  adamw_early = np.array([300, 310])
  sign_early = np.array([290, 300])
  assert f"| adamw | {adamw_early.mean():.1f} ± {adamw_early.std(ddof=1):.1f} |" in table
  assert f"| adamw-sign | {sign_early.mean():.1f} ± {sign_early.std(ddof=1):.1f} |" in table
  # Paired, best against best in each third: early 290 - 300 and 300 - 310; mid 201 - 200 and
  # 205 - 210; late 181 - 180 and 188 - 190.
  mid, late = np.array([1.0, -5.0]), np.array([1.0, -2.0])
  cells = [
    "-10.0 ± 0.0 (2/2)",
    f"{mid.mean():+.1f} ± {mid.std(ddof=1):.1f} (1/2)",
    f"{late.mean():+.1f} ± {late.std(ddof=1):.1f} (1/2)",
  ]
  assert "| adamw-sign | " + " | ".join(cells) + " |" in table
  assert "Unigram model on the same validation tokens: 700.0." in table


def test_a_training_without_the_base_view_is_refused(tmp_path):
  training = _training(tmp_path, 0, {"adamw-sign": [300, 200, 100]})
  with pytest.raises(report.app.UsageError, match="no 'adamw' view"):
    report.make_tables(report.find_views([training]), unigram=None)


def test_the_unigram_floor_is_the_train_counts_perplexity_on_the_scored_tokens(tmp_path):
  from examples.language_modeling.conftest import write_ptb
  from examples.language_modeling.input_pipeline import load_corpus

  write_ptb(tmp_path)
  corpus = load_corpus(str(tmp_path))
  counts = {w: 1.0 for w in range(corpus.vocab_size)}
  for w in corpus.train:
    counts[int(w)] += 1
  total = sum(counts.values())
  scored = corpus.valid[1:50]
  expected = math.exp(-sum(math.log(counts[int(w)] / total) for w in scored) / len(scored))
  assert report.unigram_perplexity(str(tmp_path), 50) == pytest.approx(expected, rel=1e-12)
