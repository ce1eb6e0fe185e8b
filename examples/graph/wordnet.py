"""WordNet 3.0 as a node-classification graph in the GraphSAGE format (a real graph that installs
offline; NOT PPI).

PPI cannot be downloaded here, so the example's real run uses the WordNet noun graph from Debian's
``wordnet-base`` package (``apt-get install wordnet-base``: Princeton's database files in
``/usr/share/wordnet``):

* nodes: the 82,115 noun synsets;
* edges: every noun-to-noun pointer (hypernymy, hyponymy, instance, meronymy/holonymy, domain
  links), made undirected;
* features: a binary bag of words of each synset's gloss (definition and examples), over the
  ``vocab_size`` most frequent non-stop-words of the training glosses (the form of Cora's features);
* labels: the lexicographer file that holds the synset (``noun.animal``, ``noun.artifact``, ... 26
  classes): one class per node, so the task is multi-class, scored by accuracy and micro-F1;
* split: nodes drawn at random into train/val/test with a fixed seed.

The converter parses the database files themselves (format ``wndb(5)``: ``offset lex_filenum
ss_type w_cnt word lex_id ... p_cnt ptr... | gloss``) and writes ``<prefix>-G.json`` etc. with
:func:`examples.graph.graphsage_data.write_graphsage`, so training reads it through the same loader
as PPI.

Run: ``python -m examples.graph.wordnet --out_dir=/tmp/wordnet_graph``.
"""

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from examples.common.errors import DataError
from examples.graph.graphsage_data import write_graphsage

# lexnames(5): lexicographer file numbers 3..28 are the noun files, in this order.
NOUN_LEXNAMES = (
  "noun.Tops",
  "noun.act",
  "noun.animal",
  "noun.artifact",
  "noun.attribute",
  "noun.body",
  "noun.cognition",
  "noun.communication",
  "noun.event",
  "noun.feeling",
  "noun.food",
  "noun.group",
  "noun.location",
  "noun.motive",
  "noun.object",
  "noun.person",
  "noun.phenomenon",
  "noun.plant",
  "noun.possession",
  "noun.process",
  "noun.quantity",
  "noun.relation",
  "noun.shape",
  "noun.state",
  "noun.substance",
  "noun.time",
)
_FIRST_NOUN_LEXFILE = 3


class WordNetFormatError(DataError):
  """A line of a WordNet database file does not follow wndb(5)."""


@dataclasses.dataclass(frozen=True)
class Synset:
  """One parsed ``data.noun`` line: its offset, lexicographer file, noun pointers and gloss."""

  offset: int
  lex_filenum: int
  noun_pointers: tuple[int, ...]
  gloss: str


def parse_data_line(line: str) -> Synset:
  """Parses one synset line of ``data.noun`` (wndb(5))."""
  body, _, gloss = line.partition(" | ")
  fields = body.split()
  try:
    offset, lex_filenum = int(fields[0]), int(fields[1])
    word_count = int(fields[3], 16)
    position = 4 + 2 * word_count
    pointer_count = int(fields[position])
    position += 1
    pointers = []
    for _ in range(pointer_count):
      _symbol, target, pos, _source_target = fields[position : position + 4]
      if len(_source_target) != 4:
        raise ValueError(f"bad pointer source/target {_source_target!r}")
      if pos == "n":
        pointers.append(int(target))
      position += 4
  except (IndexError, ValueError) as e:
    raise WordNetFormatError(f"not a wndb(5) synset line ({e}): {line[:80]!r}") from e
  return Synset(offset, lex_filenum, tuple(pointers), gloss.strip())


def read_noun_synsets(path: str) -> list[Synset]:
  """All synsets of a WordNet ``data.noun`` file (license header lines start with two spaces)."""
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"Missing {path}. Install WordNet's database (Debian: `apt-get install wordnet-base`) or"
      " pass --wordnet_dir."
    )
  synsets = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for number, line in enumerate(f, start=1):
      if line.startswith("  ") or not line.strip():
        continue
      try:
        synsets.append(parse_data_line(line.rstrip("\n")))
      except WordNetFormatError as e:
        raise WordNetFormatError(f"{path}, line {number}: {e}") from e
  if not synsets:
    raise WordNetFormatError(f"{path} holds no synset lines.")
  return synsets


def build_graph(
  synsets: Sequence[Synset],
  *,
  vocab_size: int,
  val_fraction: float,
  test_fraction: float,
  seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
  """Features, edges, labels, split (0/1/2) and vocabulary of the noun graph."""
  from sklearn.feature_extraction.text import CountVectorizer

  index = {s.offset: i for i, s in enumerate(synsets)}
  edges = np.array(
    [(i, index[t]) for i, s in enumerate(synsets) for t in s.noun_pointers if t in index],
    dtype=np.int64,
  ).reshape(-1, 2)
  edges = np.unique(np.sort(edges[edges[:, 0] != edges[:, 1]], axis=1), axis=0)
  labels = np.array([s.lex_filenum - _FIRST_NOUN_LEXFILE for s in synsets], dtype=np.int64)
  if labels.min() < 0 or labels.max() >= len(NOUN_LEXNAMES):
    raise WordNetFormatError("lexicographer file numbers outside the noun range 3..28.")

  rng = np.random.default_rng(seed)
  draw = rng.random(len(synsets))
  split = np.where(draw < val_fraction, 1, np.where(draw < val_fraction + test_fraction, 2, 0))

  glosses = [s.gloss for s in synsets]
  vectorizer = CountVectorizer(binary=True, max_features=vocab_size, stop_words="english")
  vectorizer.fit([g for g, part in zip(glosses, split, strict=True) if part == 0])
  features = vectorizer.transform(glosses).toarray().astype(np.float32)
  return features, edges, labels, split, list(vectorizer.get_feature_names_out())


def convert(
  wordnet_dir: str,
  out_dir: str,
  *,
  prefix: str = "wordnet-noun",
  vocab_size: int = 500,
  val_fraction: float = 0.1,
  test_fraction: float = 0.1,
  seed: int = 0,
) -> dict[str, str]:
  """Writes WordNet's noun graph as ``<out_dir>/<prefix>-{G.json,feats.npy,...}``."""
  synsets = read_noun_synsets(os.path.join(wordnet_dir, "data.noun"))
  features, edges, labels, split, _ = build_graph(
    synsets,
    vocab_size=vocab_size,
    val_fraction=val_fraction,
    test_fraction=test_fraction,
    seed=seed,
  )
  return write_graphsage(
    out_dir, prefix, features=features, edges=edges, labels=labels, split=split
  )


def main(argv: Sequence[str]) -> None:
  del argv
  options = flags.FLAGS
  paths = convert(
    options.wordnet_dir,
    options.out_dir,
    prefix=options.prefix,
    vocab_size=options.vocab_size,
    seed=options.seed,
  )
  print("\n".join(paths.values()))


if __name__ == "__main__":
  # Flags are defined only when run as a script, so importing this module defines none.
  flags.DEFINE_string("wordnet_dir", "/usr/share/wordnet", "WordNet database directory.")
  flags.DEFINE_string("out_dir", None, "Where to write the GraphSAGE files.", required=True)
  flags.DEFINE_string("prefix", "wordnet-noun", "File-name prefix of the dataset.")
  flags.DEFINE_integer("vocab_size", 500, "Bag-of-words vocabulary size.")
  flags.DEFINE_integer("seed", 0, "Seed of the train/val/test split.")
  app.run(main)
