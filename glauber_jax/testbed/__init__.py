r"""The synthetic testbed: every sampler against the exact truth, at matched size and compute.

    python -m glauber_jax.testbed --preset=smoke|quick|full --out=DIR \
        [--variant=hmm|enum|both] [--language_seed=S] [--rows=NAME,NAME] [--gin.NAME=VALUE ...]

For each variant (``hmm``: the hidden Markov language of ``synthetic_lm``/``synthetic_ul2``, 64
letters, ``L = 32``; ``enum``: the enumerable 4-letter Markov chain of ``synthetic_enum_*``,
``L = 6``) it trains and samples every row of ``ROWS`` in this process, through the library's
own entry points (``train.train`` and ``infer.infer`` under gin, as ``glauber_jax.quickstart``
does), judges every row's samples with ``synthetic_judge.exact_judge_row`` and writes
``DIR/table.json`` (one dict per row) and ``DIR/table.md`` (a table per variant, with the
command and the date on top).

Rows (``ROWS``; a row is one line there: its kind and its extra gin bindings):

- ``causal_lm``, ``mdlm``: the baselines (``gin/ar_tiny.gin``, ``gin/mdlm_tiny.gin``) on the
  ``lm`` task.
- ``hybrid_epsilon_flat``, ``hybrid_gamma_flat``: the hybrid family
  (``gin/hybrid_{epsilon,gamma}_tiny.gin``) trained like ``mdlm`` and sampled over a flat
  hyperschedule; ``hybrid_epsilon_flat_acs``: the epsilon checkpoint sampled with ACS;
  ``hybrid_gamma_block``: the gamma-hybrid trained and sampled on Block^8 hyperschedules.
- ``prior``: CAUSAL-GEN of the UL2 pretrained on the ``ul2`` task (``gin/ul2_tiny.gin``),
  sampled as ``infer --mode=causal`` does for a UL2 checkpoint.
- ``teacher_gibbs_n<N>``: that draft plus ``N`` reverse rounds whose kernel is the UL2's own
  MASK-INFILL: the Glauber DiT converted from the UL2 with no Glauber training.
- ``glauber_<loss>_n<N>``: Glauber DiTs (``gin/ul2_tiny_glauber.gin``) trained from the UL2 with
  that loss on the ``N``-round chain, each sampled with its own ``N`` (``ce_all_sites`` in the
  ``literal`` training mode: with the trajectory buffer it memorises the few data rows the
  chains hold, ``docs/results.md``).
- ``oracle_n<N>`` (``enum`` only): the exact reverse process of the ``N``-round chain whose
  forward kernel is the trained DiT's teacher (``oracle_forward_marginals``,
  ``oracle_reverse_sample``), started from the ``prior`` row's drafts.
- ``perturbed_prior``, ``perturbed_oracle_n<N>`` (``enum`` only; NumPy, no model): the
  controlled case with a known error to correct. The teacher is the exact conditional of a
  perturbed language ``p'`` (``perturbation``), the prior draws from ``p'`` itself (the paper's
  premise: CAUSAL-GEN samples the energy model's own law), and ``N`` exact reverse rounds of the
  chain started from ``p_data`` carry the drafts back towards ``p_data``. These rows also give
  ``tv_exact``, the total variation of the row's exact output law (no sampling noise).

Sizes (steps, batch, samples, model dimensions) come from ``gin/testbed/<preset>.gin``
(``Budget`` and the networks' shapes; ``<variant>/Budget.*`` scopes set a variant's own
budget); settings every Glauber row shares from ``gin/testbed/glauber.gin``. ``--gin.X=Y``
bindings apply to every run (``--language_seed=S`` is ``synthetic_language_config.seed`` and
``synthetic_enum_config.seed``); ``--rows=a,b`` runs only those rows. Everything goes under
``DIR/<variant>/<row>`` (the shared UL2 in ``DIR/<variant>/ul2``, trained only when a selected
row reads it: ``config.UL2_KINDS``). The gin files are read from
a snapshot of ``gin/`` taken at the start (``DIR/gin``), so one invocation sees one
configuration. A finished row is reused by a rerun whose configuration for it is unchanged
(its ``spec.json`` holds a digest of every parsed binding; ``row.json`` the result), an
unfinished one resumes from its checkpoints, and a row whose configuration changed is refused
(delete its directory or pick another ``--out``).

The modules, each importing only those above it:

- ``config``: the rows (``ROWS``), the presets' ``Budget`` and the gin configurables, registered
  under this package's name (``testbed.Budget.*``, ``testbed.compile_options.*``).
- ``oracle``: the exact reverse process on enumerable tables (NumPy).
- ``report``: ``table.md``.
- ``runner``: ``Testbed``, which trains, samples and judges the rows.
- ``__main__``: the command line, which passes ``tasks.registry`` in (the library never imports
  ``tasks``).
"""

# Registers the configurables the preset files' ``import glauber_jax.testbed`` brings in.
from glauber_jax.testbed import config

__all__ = ["config"]
