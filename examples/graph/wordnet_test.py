"""Tests of the WordNet-to-GraphSAGE converter on a small data.noun written in wndb(5) format."""

import numpy as np
import pytest

from examples.graph import wordnet
from examples.graph.graphsage_data import load_graphsage

# Three real noun synsets (WordNet 3.0, pointers trimmed to these three plus one verb pointer and
# one to a synset outside the file), after two license-header lines as the real file has.
DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00015388 03 n 03 animal 0 animate_being 0 beast 0 003 @ 00004258 n 0000 ~ 01317541 n 0000 \
~ 02084071 n 0000 | a living organism characterized by voluntary movement
02084071 05 n 02 dog 0 domestic_dog 0 003 @ 00015388 n 0000 + 01047745 v 0101 \
~ 01317541 n 0000 | a member of the genus Canis; "the dog barked all night"
01317541 05 n 01 domestic_animal 0 002 @ 00015388 n 0000 ~ 02084071 n 0000 \
| any of various animals that have been tamed and made fit for a human environment
"""


def test_parse_data_line_keeps_noun_pointers_and_gloss():
  line = DATA_NOUN.splitlines()[3]
  synset = wordnet.parse_data_line(line)
  assert synset.offset == 2084071 and synset.lex_filenum == 5
  assert synset.noun_pointers == (15388, 1317541)  # the verb pointer is dropped
  assert synset.gloss.startswith("a member of the genus Canis")


def test_malformed_line_is_reported_with_file_and_line(tmp_path):
  path = tmp_path / "data.noun"
  path.write_text(DATA_NOUN + "00000001 05 n zz broken\n")
  with pytest.raises(wordnet.WordNetFormatError, match=r"data\.noun, line 6"):
    wordnet.read_noun_synsets(str(path))


def test_missing_database_says_how_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match="wordnet-base"):
    wordnet.read_noun_synsets(str(tmp_path / "data.noun"))


def test_convert_writes_a_graph_the_loader_reads(tmp_path):
  (tmp_path / "wn").mkdir()
  (tmp_path / "wn" / "data.noun").write_text(DATA_NOUN)
  wordnet.convert(
    str(tmp_path / "wn"),
    str(tmp_path / "out"),
    prefix="wn",
    vocab_size=50,
    val_fraction=0.0,
    test_fraction=0.0,
  )
  data = load_graphsage(str(tmp_path / "out"), "wn")
  assert not data.multilabel
  # noun.Tops (file 3) is class 0, noun.animal (file 5) is class 2.
  np.testing.assert_array_equal(data.labels.argmax(axis=1), [0, 2, 2])
  assert wordnet.NOUN_LEXNAMES[2] == "noun.animal"
  # animal-dog, animal-domestic_animal, dog-domestic_animal; the pointer to 00004258 is outside.
  assert data.edges.tolist() == [[0, 1], [0, 2], [1, 2]]
  assert data.features.shape == (3, data.features.shape[1]) and data.features.shape[1] <= 50
