"""The testbed's report: ``table.md``, one markdown table per variant under the command and date."""

from __future__ import annotations

import datetime
import math
from typing import Any, Sequence

from glauber_jax.testbed.config import VARIANTS


def fmt(value: Any, digits: int = 3) -> str:
  """A table cell or log value: ``-`` for None, floats to ``digits`` decimals."""
  if value is None:
    return "-"
  if isinstance(value, float):
    if math.isnan(value):
      return "nan"
    return f"{value:.{digits}f}"
  return str(value)


def markdown_table(table: Sequence[dict[str, Any]], command: str, preset: str) -> str:
  """``table.md``: the command and date, then one table per variant."""
  lines = [f"# Synthetic testbed ({preset})", "",
           f"Command: `{command}`", "",
           f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}", "",
           "`true_nll`: mean exact `-log p(x) / L` of the samples (nats/token; +- standard "
           "error), `draft_nll` the same for the row's own CAUSAL-GEN drafts before its rounds, "
           "`effect` the rounds' mean change of each sample's NLL against its own draft (+- "
           "paired standard error; negative: closer to the data), `data_nll` for data; `entropy`: token entropy of the samples "
           "(`data_entropy` of as many data sequences); `tv`: total variation to the exact law, "
           "with `tv_noise` the floor of a perfect sampler of as many samples; `invalid`: "
           "samples holding a non-letter; `changed`: mean sites the rounds changed; `calls`: "
           "model calls per sample; `train steps`: optimizer steps behind the row (batch in "
           "`training`); `seconds`: this row's own wall time (the UL2's pretraining is "
           "counted in `prior`).", ""]
  for variant in VARIANTS:
    rows = [r for r in table if r["variant"] == variant]
    if not rows:
      continue
    enumerable = any("tv" in r for r in rows)
    header = ["model", "true_nll", "draft_nll", "effect", "data_nll", "entropy",
              "data_entropy"]
    if enumerable:
      header += ["tv", "draft_tv", "tv_noise"]
    header += ["invalid", "changed", "calls", "samples", "train steps", "training",
               "parameters", "seconds"]
    lines += [f"## {variant} (L = {rows[0]['sequence_length']})", "",
              "| " + " | ".join(header) + " |",
              "| --- |" + " ---: |" * (len(header) - 1)]
    for r in rows:
      nll = fmt(r["true_nll"]) + (f" +- {r['true_nll_se']:.3f}" if r.get("true_nll_se")
                                   else "")
      effect = fmt(r.get("rounds_effect")) + (f" +- {r['rounds_effect_se']:.3f}"
                                              if r.get("rounds_effect_se") else "")
      cells = [r["model"], nll, fmt(r.get("draft_true_nll")), effect,
               f"{fmt(r['data_nll'])} +- {fmt(r['data_nll_se'])}",
               fmt(r["entropy"]), fmt(r["data_entropy"])]
      if enumerable:
        cells += [fmt(r.get("tv")), fmt(r.get("draft_tv")), fmt(r.get("tv_noise"))]
      seconds = r["seconds"] + r.get("seconds_ul2", 0.0)
      cells += [fmt(r["invalid_fraction"]), fmt(r.get("sites_changed"), 1),
                str(r["sampling_calls"] or "exact"), str(r["num_samples"]),
                str(r["train_steps"]), r["train_detail"], f"{r['parameters']:,}",
                f"{seconds:.0f}"]
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for r in rows:
      if r.get("teacher_infill_nll") is not None:
        lines += [f"The UL2 as the chain's teacher (`{r['model']}` row's model): MASK-INFILL "
                  f"cross entropy {r['teacher_infill_nll']:.3f} nats at a uniform site of "
                  f"fresh data, against the language's exact infill "
                  f"{r['exact_infill_nll']:.3f} and its unigram entropy "
                  f"{r['unigram_entropy']:.3f}.", ""]
  return "\n".join(lines)
