"""Zero-shot evaluation on local copies of the standard benchmarks (issue 15).

``readers`` reads the published formats (LAMBADA, WikiText, One Billion Words, Winogrande,
PIQA, SIQA, HellaSwag), ``detokenizers`` undoes their tokenisation, ``scoring`` computes
perplexities (exact or bounds), multiple-choice and LAMBADA accuracies through the models'
likelihood interface, and ``python -m glauber_jax.zero_shot`` prints the tables.
"""
