"""The infer CLI's prompt handling: prompt files and batches that mix prompts of equal length."""

from __future__ import annotations

import json
import pathlib

import pytest

from glauber_jax import infer


def test_prompt_rows_are_batched_by_prefix_length_in_prompt_order() -> None:
  prompt_ids = [[5, 6], [7, 8], [9], [1, 2]]
  batches = list(infer.prompt_row_batches(prompt_ids, num_samples=2, batch_size=3))
  assert [[index for index, _ in batch] for batch in batches] == [[0, 0, 1], [1], [2, 2],
                                                                  [3, 3]]
  assert all(len({len(ids) for _, ids in batch}) == 1 for batch in batches)
  unconditional = list(infer.prompt_row_batches([None], num_samples=5, batch_size=2))
  assert [len(batch) for batch in unconditional] == [2, 2, 1]


def test_prompt_files(tmp_path: pathlib.Path) -> None:
  text = tmp_path / "prompts.txt"
  text.write_text("To be, or not\n\nFriends, Romans\n")
  assert infer.read_prompts(str(text)) == ["To be, or not", "Friends, Romans"]
  records = tmp_path / "puzzles.jsonl"
  records.write_text(json.dumps({"prompt": "0123", "solution": "x"}) + "\n")
  assert infer.read_prompts(str(records)) == ["0123"]
  records.write_text(json.dumps({"text": "0123"}) + "\n")
  with pytest.raises(ValueError, match=r"lacks \['prompt'\]"):
    infer.read_prompts(str(records))
  (tmp_path / "empty.txt").write_text("\n")
  with pytest.raises(ValueError, match="holds no prompt"):
    infer.read_prompts(str(tmp_path / "empty.txt"))
