"""The TF-free loader: determinism, exact resume, host sharding, caching, export parity, errors."""

from __future__ import annotations

import json
import os
import pathlib

import gin
import numpy as np
import pytest

from glauber_jax import data, vocabularies
from glauber_jax.data import __main__ as data_cli, cache, export
import tasks  # noqa: F401  Registers the tasks named below.
from tasks import puzzles

WORDS = ["thou", "art", "the", "king", "of", "night", "and", "day", "my", "lord"]
SOURCE_CALLS: dict[str, int] = {}


def _documents(split: str) -> list[str]:
  SOURCE_CALLS[split] = SOURCE_CALLS.get(split, 0) + 1
  rng = np.random.default_rng({"train": 0, "validation": 1, "test": 2}[split])
  return [" ".join(rng.choice(WORDS, rng.integers(3, 30))) for _ in range(60)]


def _upper_documents(split: str) -> list[str]:
  return [doc.upper() for doc in _documents(split)]


def _tiny_documents(split: str) -> list[str]:
  """Documents of one or two characters: each shorter than any noise span."""
  del split
  return ["a", "bc", "d"] * 200


def _empty(split: str) -> list[str]:
  del split
  return []


def _pairs(split: str) -> list[tuple[str, str]]:
  """Short pairs; six of the forty (every fifth but two) are too long for inputs 40."""
  del split
  return [(" ".join(WORDS[: 1 + i % 4]) * (8 if i % 5 == 0 else 1), WORDS[i % 10])
          for i in range(40)]


for _task in (
    data.Task("toy_lm", _documents, vocabularies.ByteVocabulary, "lm"),
    data.Task("toy_ul2", _documents, vocabularies.ByteVocabulary, "ul2"),
    data.Task("toy_lm_other", _upper_documents, vocabularies.ByteVocabulary, "lm"),
    data.Task("toy_lm_gpt2", _documents, vocabularies.Gpt2BpeVocabulary, "lm"),
    data.Task("toy_tiny_ul2", _tiny_documents, vocabularies.ByteVocabulary, "ul2"),
    data.Task("toy_empty_lm", _empty, vocabularies.ByteVocabulary, "lm"),
    data.Task("toy_pairs", _pairs, vocabularies.ByteVocabulary, "text_pair"),
):
  data.register_task(_task, replace=True)
if "toy_mix" not in data.registered_mixture_names():
  data.register_mixture("toy_mix", [("toy_lm", 3.0), ("toy_lm_other", 1.0)])
  data.register_mixture("toy_bad_mix", [("toy_lm", 1.0), ("toy_lm_gpt2", 1.0)])

UL2_LENGTHS = {"inputs": 48, "targets": 24}


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
  return [next(iterator) for _ in range(count)]


def assert_same(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for name in x:
      assert x[name].dtype == y[name].dtype
      np.testing.assert_array_equal(x[name], y[name])


@pytest.mark.parametrize("task,lengths", [("toy_lm", {"targets": 32}), ("toy_ul2", UL2_LENGTHS),
                                          ("toy_mix", {"targets": 16})])
def test_deterministic_and_exactly_resumable_across_epochs(task: str, lengths: dict) -> None:
  first = data.get_batch_iterator(task, "train", lengths, batch_size=8, seed=3)
  size = first.source.size
  assert size > 8
  batches = take(first, 3 * size // 8 + 2)  # Crosses three epoch boundaries.
  assert first.epoch == 3
  assert_same(batches, take(data.get_batch_iterator(task, "train", lengths, 8, seed=3),
                            len(batches)))
  for resume_at in (5, size // 8 + 1):  # Mid-epoch, and just after a boundary.
    resumed_from = data.get_batch_iterator(task, "train", lengths, 8, seed=3)
    take(resumed_from, resume_at)
    state = json.loads(json.dumps(resumed_from.get_state()))  # What a checkpoint stores.
    resumed = data.get_batch_iterator(task, "train", lengths, 8, seed=3)
    resumed.set_state(state)
    assert_same(take(resumed, len(batches) - resume_at), batches[resume_at:])
  other_seed = next(data.get_batch_iterator(task, "train", lengths, 8, seed=4))
  assert any((other_seed[k] != batches[0][k]).any() for k in other_seed)
  for batch in batches:
    assert {name: value.shape[0] for name, value in batch.items()} == dict.fromkeys(batch, 8)


def test_ul2_examples_are_the_denoisers_on_cached_chunks() -> None:
  from glauber_jax import denoisers  # pylint: disable=import-outside-toplevel
  iterator = data.get_batch_iterator("toy_ul2", "train", UL2_LENGTHS, 4, seed=7, shuffle=False)
  batch = next(iterator)
  source = iterator.source
  assert source.chunk_length == denoisers.largest_chunk_length(
      denoisers.ul2_denoisers(), 48, 24)
  for i in range(4):
    expected = denoisers.ul2_example(source.chunks[i], np.random.default_rng((7, 0, i)),
                                     denoisers.ul2_denoisers(), source.vocab, 48, 24)
    for name, value in expected.items():
      np.testing.assert_array_equal(batch[name][i], value)
  assert batch["encoder_input_tokens"].dtype == np.int32
  assert batch["decoder_loss_weights"].dtype == np.float32


@pytest.mark.parametrize("task,lengths", [("toy_lm", {"targets": 16}), ("toy_ul2", UL2_LENGTHS)])
def test_hosts_together_see_the_single_host_stream(task: str, lengths: dict) -> None:
  single = take(data.get_batch_iterator(task, "train", lengths, 4, seed=1), 6)
  hosts = [take(data.get_batch_iterator(task, "train", lengths, 2, seed=1, shard_index=h,
                                        num_shards=2), 6) for h in range(2)]
  for name in single[0]:
    single_rows = np.concatenate([b[name] for b in single])
    host_rows = np.stack([np.concatenate([b[name] for b in h]) for h in hosts], axis=1)
    np.testing.assert_array_equal(host_rows.reshape(single_rows.shape), single_rows)


def test_lm_chunks_are_the_documents_joined_by_eos() -> None:
  vocab = vocabularies.ByteVocabulary()
  stream = np.concatenate([np.append(vocab.encode(d), vocab.eos_id) for d in _documents("test")])
  iterator = data.get_batch_iterator("toy_lm", "test", {"targets": 20}, 5, shuffle=False,
                                     repeat=False)
  rows = np.concatenate([b["targets"] for b in iterator])
  assert rows.dtype == np.int32 and rows.shape[1] == 20
  np.testing.assert_array_equal(rows.reshape(-1), stream[: rows.size])
  assert len(stream) - rows.size < 20 + 5 * 20  # Only the remainder and a partial batch left.


def test_chunk_cache_is_reused_and_sharded_on_disk(tmp_path: pathlib.Path) -> None:
  with gin.unlock_config():
    gin.bind_parameter("cache_directory.path", str(tmp_path / "cache"))
  try:
    task = data.get_task("toy_lm")
    calls = SOURCE_CALLS.get("validation", 0)
    whole = cache.tokenized_chunks(task, "validation", 8)
    assert SOURCE_CALLS["validation"] == calls + 1
    assert whole.directory.startswith(str(tmp_path / "cache"))
    again = cache.tokenized_chunks(task, "validation", 8)
    assert SOURCE_CALLS["validation"] == calls + 1  # Read from the cache, not the source.
    assert not [p for p in os.listdir(os.path.dirname(whole.directory)) if ".tmp-" in p]
    sharded = cache.tokenized_chunks(task, "validation", 8, tokens_per_shard=50)
    assert len(sharded) == len(whole) == len(again) and len(whole._shards) == 1
    other_length = cache.tokenized_chunks(task, "validation", 9)
    assert other_length.directory != whole.directory
    assert len(os.listdir(other_length.directory)) == 2  # One shard and the index.
  finally:
    gin.clear_config()


def test_streaming_shards_hold_the_same_chunks(tmp_path: pathlib.Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.setenv("GLAUBER_JAX_CACHE", str(tmp_path / "a"))
  whole = cache.tokenized_chunks(data.get_task("toy_lm"), "train", 8)
  monkeypatch.setenv("GLAUBER_JAX_CACHE", str(tmp_path / "b"))
  sharded = cache.tokenized_chunks(data.get_task("toy_lm"), "train", 8, tokens_per_shard=100)
  assert len(sharded._shards) > 5 and len(sharded) == len(whole)
  for i in range(len(whole)):
    np.testing.assert_array_equal(sharded[i], whole[i])
  assert sharded._shards[0].dtype == np.uint16  # Byte ids fit 16 bits on disk.
  with pytest.raises(IndexError):
    sharded[len(sharded)]


def test_mixtures_draw_by_rate_deterministically_and_resume() -> None:
  lengths = {"targets": 16}
  first = take(data.get_batch_iterator("toy_mix", "train", lengths, 8, seed=2), 12)
  rows = np.concatenate([b["targets"] for b in first])
  # toy_lm_other's documents use capital letters only; count its share of the rows.
  other = np.mean([((row >= 3 + ord("A")) & (row <= 3 + ord("Z"))).any() for row in rows])
  assert 0.12 < other < 0.40, other
  assert data.task_vocabulary("toy_mix") == vocabularies.ByteVocabulary()
  with pytest.raises(ValueError, match="share one vocabulary"):
    data.get_batch_iterator("toy_bad_mix", "train", lengths, 8)
  with pytest.raises(ValueError, match="unknown task 'toy_lmm'"):
    data.register_mixture("toy_typo_mix", [("toy_lmm", 1.0)])


def test_export_then_load_gives_the_same_batches(tmp_path: pathlib.Path) -> None:
  out = data.export_task("toy_ul2", "train", UL2_LENGTHS, str(tmp_path / "export"), seed=5,
                         num_epochs=3, examples_per_shard=7)
  manifest = json.loads((tmp_path / "export" / export.MANIFEST).read_text())
  size = data.get_batch_iterator("toy_ul2", "train", UL2_LENGTHS, 1, seed=5).source.size
  assert manifest["epochs"] == [size] * 3 and manifest["skipped"] == 0
  assert manifest["vocabulary"] == vocabularies.ByteVocabulary().fingerprint()
  assert manifest["features"]["decoder_loss_weights"]["dtype"] == "float32"
  for num_shards in (1, 2, 3):  # Also when the epoch does not split evenly.
    for host in range(num_shards):
      live = data.get_batch_iterator("toy_ul2", "train", UL2_LENGTHS, 4, seed=5,
                                     shard_index=host, num_shards=num_shards)
      exported = data.get_batch_iterator("toy_ul2", "train", UL2_LENGTHS, 4, seed=5,
                                         shard_index=host, num_shards=num_shards,
                                         exported_dir=out)
      count = 2 * size // num_shards // 4 + 1  # Into the third epoch.
      assert_same(take(exported, count), take(live, count))
  state = exported.get_state()
  again = data.get_batch_iterator("toy_ul2", "train", UL2_LENGTHS, 4, seed=5, shard_index=2,
                                  num_shards=3, exported_dir=out)
  again.set_state(state)
  assert_same(take(again, 2), take(exported, 2))
  with pytest.raises(ValueError, match="holds"):
    data.get_batch_iterator("toy_ul2", "train", UL2_LENGTHS, 4, seed=0, exported_dir=out)
  with pytest.raises(FileExistsError):
    data.export_task("toy_ul2", "train", UL2_LENGTHS, out, seed=5)
  with pytest.raises(ValueError, match="num_shards"):
    data.get_batch_iterator("toy_ul2", "train", UL2_LENGTHS, 4, seed=5, exported_dir=out
                            ).set_state(state)


def test_export_a_number_of_examples_without_repeat(tmp_path: pathlib.Path) -> None:
  out = data.export_task("toy_lm", "test", {"targets": 16}, str(tmp_path / "e"),
                         num_examples=10, shuffle=False)
  exported = data.get_batch_iterator("toy_lm", "test", {"targets": 16}, 4, shuffle=False,
                                     repeat=False, exported_dir=out)
  live = data.get_batch_iterator("toy_lm", "test", {"targets": 16}, 4, shuffle=False)
  assert_same(list(exported), take(live, 2))  # 10 examples: two full batches.


def test_text_pairs_that_do_not_fit_are_skipped_and_counted() -> None:
  iterator = data.get_batch_iterator("toy_pairs", "train", {"inputs": 40, "targets": 8}, 4,
                                     shuffle=False, repeat=False)
  batches = list(iterator)
  assert iterator.skipped == 6 and len(batches) == 34 // 4
  vocab = vocabularies.ByteVocabulary()
  assert vocab.decode(batches[0]["encoder_input_tokens"][1]) == "thou art"
  assert vocab.decode(batches[0]["decoder_target_tokens"][1]) == "art"
  np.testing.assert_array_equal(batches[0]["decoder_input_tokens"][:, 0], 0)


def test_tiny_documents_are_packed_not_dropped() -> None:
  batch = next(data.get_batch_iterator("toy_tiny_ul2", "train", UL2_LENGTHS, 8))
  assert batch["encoder_input_tokens"].shape == (8, 48)
  assert (batch["decoder_loss_weights"].sum(axis=1) > 1).all()


def test_errors_are_clear(tmp_path: pathlib.Path) -> None:
  with pytest.raises(ValueError, match="Did you mean 'shakespeare_lm'"):
    data.get_task("shakespeare_lmm")
  with pytest.raises(ValueError, match="Did you mean 'toy_mix'"):
    data.get_batch_iterator("toy_mixx", "train", {"targets": 8}, 2)
  with pytest.raises(ValueError, match="too small for the denoiser settings"):
    data.get_batch_iterator("toy_ul2", "train", {"inputs": 4, "targets": 2}, 2)
  with pytest.raises(ValueError, match="needs TASK_FEATURE_LENGTHS"):
    data.get_batch_iterator("toy_lm", "train", {"inputs": 8, "targets": 8}, 2)
  with pytest.raises(ValueError, match="must be positive"):
    data.get_batch_iterator("toy_lm", "train", {"targets": 0}, 2)
  with pytest.raises(ValueError, match="no split 'dev'"):
    data.get_batch_iterator("toy_lm", "dev", {"targets": 8}, 2)
  with pytest.raises(ValueError, match="no documents"):
    data.get_batch_iterator("toy_empty_lm", "train", {"targets": 8}, 2)
  with pytest.raises(ValueError, match="not one chunk"):
    data.get_batch_iterator("toy_lm", "train", {"targets": 100_000}, 2)
  with pytest.raises(ValueError, match="exceeds"):
    data.get_batch_iterator("toy_lm", "train", {"targets": 16}, 10_000, repeat=False)
  with pytest.raises(FileNotFoundError, match="manifest"):
    data.get_batch_iterator("toy_lm", "train", {"targets": 16}, 2, exported_dir="/nonexistent")
  with pytest.raises(ValueError, match="already registered"):
    data.register_task(data.get_task("toy_lm"))
  saved = data.get_batch_iterator("toy_lm", "train", {"targets": 16}, 2, seed=1).get_state()
  with pytest.raises(ValueError, match="seed"):
    data.get_batch_iterator("toy_lm", "train", {"targets": 16}, 2, seed=2).set_state(saved)


def test_shakespeare_tasks_through_the_default_vocabulary() -> None:
  vocab = data.task_vocabulary("shakespeare_lm")  # Trains the 4,000-piece model once.
  assert vocab.vocab_size == 4224
  assert vocab == data.task_vocabulary("shakespeare_ul2")
  batch = next(data.get_batch_iterator("shakespeare_lm", "validation", {"targets": 64}, 2))
  assert batch["targets"].shape == (2, 64)
  assert len(vocab.decode(batch["targets"][0]).split()) > 10
  ul2 = next(data.get_batch_iterator("shakespeare_ul2", "validation",
                                     {"inputs": 128, "targets": 64}, 2))
  assert ul2["encoder_input_tokens"].shape == (2, 128)
  assert ul2["encoder_input_tokens"].max() < 4224


def test_openwebtext_task_from_a_local_directory(tmp_path: pathlib.Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
  owt = tmp_path / "owt"
  owt.mkdir()
  for i in range(5):
    (owt / f"{i:02d}.txt").write_text(" ".join(WORDS[i:] * (i + 2)))
  monkeypatch.delenv("OPENWEBTEXT_DIR", raising=False)
  with pytest.raises(ValueError, match="OPENWEBTEXT_DIR"):
    data.get_batch_iterator("openwebtext_lm", "validation", {"targets": 16}, 2)
  with gin.unlock_config():
    gin.bind_parameter("openwebtext_path.path", str(owt))
  try:
    with pytest.raises(ValueError, match="all held out"):
      data.get_batch_iterator("openwebtext_lm", "train", {"targets": 16}, 2)
    iterator = data.get_batch_iterator("openwebtext_lm", "validation", {"targets": 16}, 2,
                                       shuffle=False)
    text = vocabularies.Gpt2BpeVocabulary().decode(next(iterator)["targets"][0])
    assert text.split()[0] == "thou"
    assert iterator.source.chunks.num_documents == 5
    ul2 = next(data.get_batch_iterator("openwebtext_ul2", "validation", UL2_LENGTHS, 2))
    assert ul2["encoder_input_tokens"].shape == (2, 48)
  finally:
    gin.clear_config()
  (owt / "00.txt").write_text("night " * 40)  # Changed files are tokenised afresh.
  monkeypatch.setenv("OPENWEBTEXT_DIR", str(owt))
  iterator = data.get_batch_iterator("openwebtext_lm", "validation", {"targets": 16}, 2,
                                     shuffle=False)
  assert vocabularies.Gpt2BpeVocabulary().decode(next(iterator)["targets"][0]).split()[0] == \
      "night"


def test_puzzle_tasks_are_text_pairs() -> None:
  with gin.unlock_config():
    gin.bind_parameter("puzzle_sizes.validation", 6)
  try:
    iterator = data.get_batch_iterator("sudoku", "validation", {"inputs": 96, "targets": 96},
                                       2, repeat=False)
    batches = list(iterator)
  finally:
    gin.clear_config()
  assert len(batches) == 3 and iterator.skipped == 0
  vocab = vocabularies.ByteVocabulary()
  puzzle = vocab.decode(batches[0]["encoder_input_tokens"][0])
  solution = vocab.decode(batches[0]["decoder_target_tokens"][0])
  assert len(solution) >= 81 and puzzle != solution


def test_sudoku_lm_chunks_are_whole_puzzle_solution_documents() -> None:
  with gin.unlock_config():
    gin.bind_parameter("puzzle_sizes.validation", 4)
  try:
    iterator = data.get_batch_iterator("sudoku_lm", "validation", {"targets": 163}, 4,
                                       shuffle=False, repeat=False)
    rows = next(iterator)["targets"]
    examples = list(puzzles.build_examples("sudoku", "validation", 4))
  finally:
    gin.clear_config()
  vocab = vocabularies.ByteVocabulary()
  assert [vocab.decode(row[:162]) for row in rows] == [puzzles.to_document(e) for e in examples]
  assert (rows[:, 162] == vocab.eos_id).all()


def test_command_line_lists_and_exports(tmp_path: pathlib.Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
  data_cli.main(["list"])
  listed = capsys.readouterr().out
  for name in ("shakespeare_ul2", "shakespeare_lm", "openwebtext_lm", "sudoku", "english_lm"):
    assert name in listed
  try:
    data_cli.main(["export", "--task=toy_lm", "--split=test", "--lengths=targets:16",
                   f"--output_dir={tmp_path / 'cli'}", "--num_examples=6", "--seed=2",
                   "--gin.cache_directory.path='" + str(tmp_path / "cli_cache") + "'"])
  finally:
    gin.clear_config()
  manifest = json.loads((tmp_path / "cli" / export.MANIFEST).read_text())
  assert manifest["lengths"] == {"targets": 16} and manifest["seed"] == 2
  assert sum(manifest["epochs"]) == 6
  assert (tmp_path / "cli_cache" / "tokens").is_dir()
  with pytest.raises(SystemExit, match="--lengths"):
    data_cli.main(["export", "--task=toy_lm", "--lengths=targets=16",
                   f"--output_dir={tmp_path}"])
  assert not gin.config_is_locked()
