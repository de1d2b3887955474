"""The Glauber DiT on a tiny network: DiT = UL2 at init, training with the chain buffer,
teacher refresh, the compiled sampler and the likelihood bound."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from glauber_jax import (checkpoints, denoisers, encoder_decoder, infer, models, network,
                         optimizers, partitioning, synthetic, trainer, vocabularies)
from glauber_jax.processes import glauber, glauber_process

import helpers

SEQ_LEN = 8
VOCAB = vocabularies.ByteVocabulary()
NETWORK = network.NetworkConfig(
    vocab_size=VOCAB.vocab_size, d_model=32, num_heads=2, head_dim=16, d_ff=48,
    num_encoder_layers=1, num_decoder_layers=1, dtype="float32", max_encoder_length=SEQ_LEN + 2,
    max_decoder_length=SEQ_LEN, time_conditioning=True, time_embed_dim=16)


def make_model(**overrides: object) -> models.DiffusionModel:
  """The tiny Glauber DiT; ``overrides`` are ``helpers.glauber_dit``'s arguments."""
  settings = dict(network_config=NETWORK, vocabulary=VOCAB, seq_len=SEQ_LEN, num_rounds=2,
                  teacher_refresh_steps=3)
  settings.update(overrides)
  return helpers.glauber_dit(**settings)


def init_params(model: models.DiffusionModel, seed: int = 0) -> dict:
  shapes = model.input_shapes(4, {"targets": SEQ_LEN})
  return nn.meta.unbox(model.get_initial_variables(jax.random.PRNGKey(seed), shapes)["params"])


def text_batch(batch: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return (3 + rng.integers(ord("a"), ord("z") + 1, (batch, SEQ_LEN))).astype(np.int32)


def test_dit_equals_source_ul2_at_every_time() -> None:
  source_config = dataclasses.replace(NETWORK, time_conditioning=False)
  source = encoder_decoder.Transformer(source_config)
  tokens = jnp.asarray(text_batch(3))
  features = denoisers.mask_infill(tokens, jnp.array([0, 3, 7]),
                                   denoisers.SpecialIds.from_vocabulary(VOCAB), xp=jnp)
  source_params = nn.meta.unbox(source.init(
      jax.random.PRNGKey(1), features["encoder_input_tokens"],
      features["decoder_input_tokens"])["params"])
  model = make_model()
  dit_params = checkpoints.merge_params(init_params(model, seed=2), source_params)
  expected = source.apply({"params": source_params}, features["encoder_input_tokens"],
                          features["decoder_input_tokens"])
  for t in (1, SEQ_LEN, model.process.num_steps):
    got = model.denoiser.module.apply({"params": dit_params}, features["encoder_input_tokens"],
                             features["decoder_input_tokens"], jnp.full((3,), t, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
  # Only the time parameters are new, and the model says so.
  flat = jax.tree_util.tree_flatten_with_path(init_params(model))[0]
  added = [path for path, _ in flat
           if model.is_added_param(tuple(getattr(k, "key", k) for k in path))]
  assert added and all("time_embedding" in str(p) or "modulation" in str(p) for p in added)


def test_added_parameter_fraction_of_ul2_medium() -> None:
  medium = network.NetworkConfig(
      vocab_size=50432, d_model=1024, num_heads=16, head_dim=64, d_ff=2048,
      num_encoder_layers=16, num_decoder_layers=16, max_encoder_length=1026,
      max_decoder_length=1024, time_conditioning=True, time_embed_dim=256)
  module = encoder_decoder.Transformer(medium)
  shapes = jax.eval_shape(lambda: module.init(
      jax.random.PRNGKey(0), jnp.ones((1, 8), jnp.int32), jnp.ones((1, 2), jnp.int32),
      jnp.ones((1,), jnp.float32)))["params"]
  flat = jax.tree_util.tree_flatten_with_path(nn.meta.unbox(shapes))[0]
  sizes = {"/".join(str(getattr(k, "key", k)) for k in path): int(np.prod(leaf.shape))
           for path, leaf in flat}
  added = sum(v for k, v in sizes.items() if "time_embedding" in k or "modulation" in k)
  # Each of the 16 * 2 encoder and 16 * 3 decoder sublayers gets (256 + 1) * 3 * 1024
  # modulation parameters; the time MLP adds two 256-wide dense layers.
  assert added == 80 * (256 + 1) * 3 * 1024 + 2 * (256 * 256 + 256)
  fraction = added / (sum(sizes.values()) - added)
  assert 0.10 < fraction < 0.20, fraction  # The paper reports about 15%.


def test_mask_infill_is_the_r_denoiser_format() -> None:
  model = make_model()
  tokens = jnp.asarray(text_batch(2))
  features = denoisers.mask_infill(tokens, jnp.array([2, 5]), model.denoiser.special_ids, xp=jnp)
  encoder = np.asarray(features["encoder_input_tokens"])
  assert encoder.shape == (2, SEQ_LEN + 2)
  assert (encoder[:, 0] == VOCAB.mode_id("[NLU]")).all() and (encoder[:, -1] == VOCAB.eos_id).all()
  assert encoder[0, 3] == VOCAB.sentinel_id(0) and encoder[1, 6] == VOCAB.sentinel_id(0)


def _tiny_trainer(model: models.DiffusionModel) -> trainer.Trainer:
  return trainer.Trainer(model=model, partitioner=partitioning.Partitioner(mesh_shape=(1, 1, 1)),
                         learning_rate_fn=optimizers.learning_rate_schedule(
                             peak_learning_rate=1e-2, warmup_steps=1, total_steps=100),
                         optimizer_fn=optimizers.create_optimizer)


@pytest.mark.parametrize("mode", ["buffer", "literal"])
def test_training_steps_chains_and_teacher_refresh(mode: str) -> None:
  model = make_model(training_mode=mode, loss="score_entropy")
  tiny = _tiny_trainer(model)
  shapes = model.input_shapes(4, {"targets": SEQ_LEN})
  first = {"targets": jnp.asarray(text_batch(4, seed=0))}
  state = tiny.initialize(shapes, first)
  if mode == "buffer":  # Warm-up spreads the chains over 0..T-1.
    np.testing.assert_array_equal(np.asarray(state.model_state["chains"].steps),
                                  glauber.staggered_targets(4, model.process.num_steps))
  for step in range(1, 4):
    state, metrics = tiny.train_step(state, {"targets": jnp.asarray(text_batch(4, seed=step))})
    assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) >= 0.0
    if mode == "buffer":
      steps = np.asarray(state.model_state["chains"].steps)
      assert ((steps >= 0) & (steps < model.process.num_steps)).all()
  # teacher_refresh_steps = 3: the step taken at step 3 first copies the student to the teacher.
  params_at_refresh = jax.tree.map(np.asarray, state.params)
  state, _ = tiny.train_step(state, {"targets": jnp.asarray(text_batch(4, seed=9))})
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray,
                                                           state.model_state["teacher"]),
               params_at_refresh)


def test_chain_tokens_stay_in_text_space() -> None:
  model = make_model()
  params = init_params(model)
  data = jnp.asarray(text_batch(4))
  sites = jnp.asarray(model.process.schedule.sites())
  chains = glauber.warm_up_chains(
      jax.random.PRNGKey(0), data, sites,
      lambda x, s, t: model.process.teacher_log_probs(model.denoiser, params, x, s, t),
      jnp.full((4,), model.process.num_steps - 1, jnp.int32))
  assert model.denoiser.allowed_tokens[np.asarray(chains.tokens)].all()


def test_sampler_compiled_prefix_frozen_and_deterministic() -> None:
  model = make_model()
  params = init_params(model)
  prefix = jnp.broadcast_to(jnp.asarray(VOCAB.encode("To")), (3, 2))
  draft, final = model.sample(params, jax.random.PRNGKey(0), 3, prefix)
  draft2, final2 = model.sample(params, jax.random.PRNGKey(0), 3, prefix)
  np.testing.assert_array_equal(final, final2)
  np.testing.assert_array_equal(draft, draft2)
  assert final.shape == (3, SEQ_LEN)
  np.testing.assert_array_equal(np.asarray(final[:, :2]), np.asarray(prefix))
  assert model.denoiser.allowed_tokens[np.asarray(final)].all()
  assert model.denoiser.allowed_tokens[np.asarray(draft)].all()
  # EOS allowed.
  assert (~model.denoiser.allowed_tokens).sum() == VOCAB.special_token_mask().sum() - 1
  assert (np.asarray(draft) != np.asarray(final)).any()  # A random network edits the draft.
  compiled = model._compiled_sample._cache_size()  # pylint: disable=protected-access
  model.sample(params, jax.random.PRNGKey(7), 3, prefix + 1)  # New batch: no recompilation.
  assert model._compiled_sample._cache_size() == compiled  # pylint: disable=protected-access
  causal_draft, causal_final = model.sample(params, jax.random.PRNGKey(0), 3, prefix,
                                            num_rounds=0)
  np.testing.assert_array_equal(causal_draft, causal_final)
  np.testing.assert_array_equal(causal_draft, draft)  # Same causal key: same draft.
  options = model.sampler_options({})
  # The default resolved: the trained N.
  assert options.num_rounds == model.process.schedule.num_rounds
  assert model.draft_options(options).num_rounds == 0


def test_frozen_prior_drafts_and_bounds_with_the_teacher() -> None:
  """prior='frozen': the draft and the bound's prior term are the teacher's CAUSAL-GEN, the
  rounds the student's MASK-INFILL; 'trained' uses the student's for both."""
  frozen = make_model(prior="frozen", prior_loss_weight=0.0, teacher_refresh_steps=0)
  trained = make_model(teacher_refresh_steps=0)
  student, teacher = init_params(frozen, seed=0), init_params(frozen, seed=1)
  key = jax.random.PRNGKey(3)
  frozen_draft, frozen_final = frozen.sample(student, key, 3, inference_state={"teacher": teacher})
  teacher_draft, teacher_final = trained.sample(teacher, key, 3)
  student_draft, _ = trained.sample(student, key, 3)
  np.testing.assert_array_equal(frozen_draft, teacher_draft)
  assert (np.asarray(frozen_draft) != np.asarray(student_draft)).any()
  assert (np.asarray(frozen_final) != np.asarray(teacher_final)).any()  # The student's rounds.
  # The bound's prior term: CAUSAL-GEN of the chain's end state under the prior's parameters.
  for model, prior_params in ((frozen, teacher), (trained, student)):
    scored_with = []
    spy = lambda denoiser, params, tokens, scored_with=scored_with: (
        scored_with.append(params) or jnp.zeros(tokens.shape[0]))
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(model.process, "prior_log_prob", spy)
      model.process.likelihood_bound(model.denoiser, student, jnp.asarray(text_batch(4)), key,
                                     {"teacher": teacher})
    assert len(scored_with) == 1 and scored_with[0] is prior_params
  with pytest.raises(ValueError, match="prior_loss_weight = 0"):
    make_model(prior="frozen", teacher_refresh_steps=0)
  with pytest.raises(ValueError, match="teacher_refresh_steps = 0"):
    make_model(prior="frozen", prior_loss_weight=0.0)
  with pytest.raises(ValueError, match="prior="):
    make_model(prior="teacher")


def test_sampler_options_are_checked() -> None:
  model = make_model()
  with pytest.raises(ValueError, match=r"no option \['num_steps'\].*num_rounds"):
    model.sampler_options({"num_steps": 4})
  with pytest.raises(ValueError, match="num_rounds must be in"):
    model.sampler_options({"num_rounds": model.process.schedule.num_rounds + 1})


def test_checkpoint_permutations_must_match_the_configuration() -> None:
  model = make_model()
  model.check_checkpoint_metadata(model.checkpoint_metadata())  # Its own: accepted.
  model.check_checkpoint_metadata({"model": "EncoderDecoderModel"})  # A UL2: nothing to check.
  with pytest.raises(ValueError, match="permutation_seed"):
    model.check_checkpoint_metadata(make_model(permutation_seed=5).checkpoint_metadata())
  with pytest.raises(ValueError, match="NUM_ROUNDS"):
    model.check_checkpoint_metadata(make_model(num_rounds=1).checkpoint_metadata())


def test_likelihood_bound_is_finite_and_below_zero() -> None:
  model = make_model()
  params = init_params(model)
  tokens = text_batch(4)
  tokens[:, 3] = VOCAB.eos_id  # Packed documents: EOS inside a sequence keeps the bound finite.
  bound = model.likelihood_bound(params, jnp.asarray(tokens), jax.random.PRNGKey(0),
                                 {"teacher": params})
  assert bound.shape == (4,)
  assert np.isfinite(np.asarray(bound)).all() and (np.asarray(bound) < 0).all()
  # Without an inference state the parameters are their own teacher.
  np.testing.assert_array_equal(bound, model.likelihood_bound(params, jnp.asarray(tokens),
                                                              jax.random.PRNGKey(0)))


def test_bad_configs_are_named() -> None:
  with pytest.raises(ValueError, match="time_conditioning"):
    make_model(network_config=dataclasses.replace(NETWORK, time_conditioning=False))
  with pytest.raises(ValueError, match="vocab_size"):
    make_model(network_config=dataclasses.replace(NETWORK, vocab_size=512))
  with pytest.raises(ValueError, match="max_encoder_length"):
    make_model(seq_len=SEQ_LEN + 1)
  with pytest.raises(ValueError, match="loss"):
    make_model(loss="mse")
  with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS"):
    make_model().input_shapes(4, {"inputs": 8, "targets": 4})


def test_encoder_readout_chain_health_and_prior_loss() -> None:
  """The encoder readout serves MASK-INFILL (and differs from the decoder's); the chain-health
  report is finite and in range; the prior loss trains CAUSAL-GEN, and 0 turns it off."""
  encoder_network = dataclasses.replace(NETWORK, infill_readout="encoder")
  model = make_model(network_config=encoder_network, loss="ce", teacher_refresh_steps=0)
  params = init_params(model)
  data = jnp.asarray(text_batch(4))
  sites = jnp.asarray([0, 3, 5, 7])
  log_probs = model.process.infill_log_probs(model.denoiser, params, data, sites,
                                             jnp.full((4,), 2))
  decoder_model = make_model(loss="ce")
  decoder_view = decoder_model.process.infill_log_probs(decoder_model.denoiser, params, data,
                                                        sites, jnp.full((4,), 2))
  assert log_probs.shape == (4, VOCAB.vocab_size)
  assert not np.allclose(np.asarray(log_probs), np.asarray(decoder_view))
  health = model.process.chain_health(model.denoiser, params, params, data,
                                      jax.random.PRNGKey(0))
  assert all(np.isfinite(float(v)) for v in health.values())
  assert 0.0 <= float(health["sweep_changed_fraction"]) <= 1.0
  tiny = _tiny_trainer(model)
  shapes = model.input_shapes(4, {"targets": SEQ_LEN})
  state = tiny.initialize(shapes, {"targets": data})
  state, _ = tiny.train_step(state, {"targets": data})  # Step 0: the warm-up's lr is 0.
  before = jax.tree.map(np.asarray, state.params)
  state, metrics = tiny.train_step(state, {"targets": data})
  assert {"prior_nll", "teacher_cross_entropy", "changed_fraction"} <= set(metrics)
  # CAUSAL-GEN's decoder is trained only by the prior loss when the encoder reads out infill.
  get = lambda tree: np.asarray(tree["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"])  # noqa: E731
  assert not np.allclose(get(before), get(state.params))
  no_prior = make_model(network_config=encoder_network, loss="ce", prior_loss_weight=0.0)
  tiny = _tiny_trainer(no_prior)
  state = tiny.initialize(shapes, {"targets": data})
  state, _ = tiny.train_step(state, {"targets": data})
  before = jax.tree.map(np.asarray, state.params)
  state, metrics = tiny.train_step(state, {"targets": data})
  assert "prior_nll" not in metrics
  np.testing.assert_array_equal(get(before), np.asarray(get(state.params)))


def test_ce_all_sites_trains_every_site_of_the_previous_state() -> None:
  """``ce_all_sites``: the cloze read-out of every site in one pass equals MASK-INFILL's at that
  site, the per-pair loss is the mean infill cross entropy over the sites of ``x_{t-1}`` and its
  reverse cross entropy metric is the one at the updated site; it needs the cloze read-out."""
  cloze_network = dataclasses.replace(NETWORK, infill_readout="cloze")
  model = make_model(network_config=cloze_network, loss="ce_all_sites", prior_loss_weight=0.0)
  params = init_params(model)
  previous = jnp.asarray(text_batch(4, seed=3))
  times = jnp.asarray([1, 4, 9, 16])
  every_site = model.denoiser.cloze_logits(params, previous, times)
  for site in range(SEQ_LEN):
    sites = jnp.full((4,), site)
    np.testing.assert_allclose(
        np.asarray(every_site[:, site]),
        np.asarray(model.denoiser.infill_logits(params, previous, sites, times)),
        rtol=1e-5, atol=1e-5)
  sites = jnp.asarray([0, 3, 5, 7])
  current_values = (glauber.get_sites(previous, sites) + 1).astype(jnp.int32)
  batch = {"tokens": glauber.set_sites(previous, sites, current_values), "sites": sites,
           "times": times, "previous_values": glauber.get_sites(previous, sites),
           "current_values": current_values, "data": previous,
           "teacher_log_probs": jnp.zeros((4, VOCAB.vocab_size))}
  loss, metrics = model.loss_fn(params, batch, None)
  site_nll = np.stack([
      -np.asarray(glauber.get_sites(
          model.process.infill_log_probs(model.denoiser, params, previous, jnp.full((4,), k),
                                         times),
          previous[:, k]))
      for k in range(SEQ_LEN)], axis=1)
  np.testing.assert_allclose(float(loss), site_nll.mean(axis=1).sum(), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["reverse_cross_entropy_sum"]),
                             site_nll[np.arange(4), np.asarray(sites)].sum(), rtol=1e-5)
  with pytest.raises(ValueError, match="cloze"):
    make_model(loss="ce_all_sites")


def test_eos_is_drawn_only_where_it_is_text() -> None:
  """Without EOS in the text no draw writes it: the forward kernel, the infill and the prior."""
  model = make_model(text_includes_eos=False)
  params = init_params(model)
  assert make_model().denoiser.allowed_tokens[VOCAB.eos_id]
  assert not model.denoiser.allowed_tokens[VOCAB.eos_id]
  data = jnp.asarray(text_batch(4))
  sites = jnp.arange(4)
  for log_probs in (
      model.process.infill_log_probs(model.denoiser, params, data, sites, sites + 1),
      model.process.teacher_log_probs(model.denoiser, params, data, sites, sites + 1)):
    assert float(jnp.max(log_probs[:, VOCAB.eos_id])) == -np.inf
  draft, final = model.sample(params, jax.random.PRNGKey(0), 4)
  assert not bool(jnp.any(draft == VOCAB.eos_id)) and not bool(jnp.any(final == VOCAB.eos_id))


def test_context_blind_teacher_is_refused_unless_allowed(monkeypatch) -> None:
  model = make_model(loss="ce")
  params = init_params(model)
  blind = {"teacher_infill_nll": 5.0, "prior_nll": 4.0, "batch_unigram_entropy": 5.0,
           "sweep_changed_fraction": 0.99, "chain_end_prior_nll": 7.0}
  monkeypatch.setattr(glauber_process.GlauberProcess, "chain_health",
                      lambda self, *args: blind)
  batch = {"targets": jnp.asarray(text_batch(4))}
  with pytest.raises(ValueError, match="context-blind"):
    model.training_start_report(params, {"teacher": params}, batch, jax.random.PRNGKey(0))
  allowed = make_model(loss="ce", allow_context_blind_teacher=True)
  report = allowed.training_start_report(params, {"teacher": params}, batch,
                                         jax.random.PRNGKey(0))
  assert report == blind
  healthy = dict(blind, teacher_infill_nll=2.0)
  monkeypatch.setattr(glauber_process.GlauberProcess, "chain_health",
                      lambda self, *args: healthy)
  assert model.training_start_report(params, {"teacher": params}, batch,
                                     jax.random.PRNGKey(0)) == healthy


SHARDED_GLAUBER_SCRIPT = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, {tests!r})
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    from glauber_jax import optimizers, partitioning, trainer
    from test_glauber_model import make_model, text_batch
    assert jax.device_count() == 8
    results = {{}}
    for name, shape, devices in (("single", (1, 1, 1), jax.devices()[:1]),
                                 ("sharded", (2, 2, 2), None)):
      part = partitioning.Partitioner(mesh_shape=shape, devices=devices)
      model = make_model()
      tr = trainer.Trainer(model, part, learning_rate_fn=optimizers.learning_rate_schedule(
          1e-2, 1, total_steps=10))
      shapes = model.input_shapes(8, {{"targets": 8}})
      state = tr.initialize(shapes, part.host_batch_to_global({{"targets": text_batch(8)}}))
      if name == "sharded":
        chains = state.model_state["chains"].tokens
        assert chains.sharding.spec == P(("data", "fsdp"), None), chains.sharding.spec
        kernel = state.model_state["teacher"]["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
        assert kernel.sharding.spec == P("fsdp", "tensor"), kernel.sharding.spec
      losses = []
      for step in range(4):  # Crosses a teacher refresh (every 3 steps).
        batch = part.host_batch_to_global({{"targets": text_batch(8, seed=step + 1)}})
        state, metrics = tr.train_step(state, batch)
        losses.append(float(metrics["loss"]))
      results[name] = (losses, jax.device_get(state.params),
                       np.asarray(state.model_state["chains"].tokens))
    np.testing.assert_allclose(results["single"][0], results["sharded"][0], rtol=1e-4)
    np.testing.assert_array_equal(results["single"][2], results["sharded"][2])
    # Sharded float32 reductions reassociate; score-entropy gradients are large (loss ~100s),
    # so after 4 steps at lr 1e-2 parameters agree to ~1e-4, not bit for bit.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=3e-4),
                 results["single"][1], results["sharded"][1])
    print("SHARDED_OK", results["single"][0], results["sharded"][0])
""")


def test_sharded_glauber_training_equals_unsharded_on_8_fake_devices() -> None:
  tests = os.path.dirname(os.path.abspath(__file__))
  script = SHARDED_GLAUBER_SCRIPT.format(tests=tests)
  env = dict(os.environ, PYTHONPATH=os.path.dirname(tests) + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=600)
  assert "SHARDED_OK" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]


def test_checkpoint_from_before_the_process_interface_restores_and_samples_the_same() -> None:
  """``tests/fixtures/pre_process_interface_glauber`` was written by the code before the
  ``Process`` interface (commit 4f35440, ``glauber_model.GlauberDiffusionModel``; two training
  steps of a tiny DiT on 3 letters, ``L = 6``, ``N = 2``, permutation seed 3), with that code's
  samples and bound. Today's model restores it through ``infer.load_inference_params`` (the
  parameter paths, the teacher and the permutations in its metadata unchanged) and computes the
  same samples, token for token, and the same bound."""
  fixture = os.path.join(os.path.dirname(__file__), "fixtures", "pre_process_interface_glauber")
  with open(os.path.join(fixture, "expected.json"), encoding="utf-8") as f:
    expected = json.load(f)
  letters = vocabularies.LetterVocabulary(synthetic.alphabet(3))
  config = network.NetworkConfig(
      vocab_size=letters.vocab_size, d_model=16, num_heads=2, head_dim=8, d_ff=32,
      num_encoder_layers=1, num_decoder_layers=1, dtype="float32", max_encoder_length=8,
      max_decoder_length=6, time_conditioning=True, time_embed_dim=8)
  model = helpers.glauber_dit(config, letters, 6, num_rounds=2, permutation_seed=3)
  params, inference_state = infer.load_inference_params(model, fixture, 3)
  draft, final = model.sample(params, jax.random.PRNGKey(5), 3)
  np.testing.assert_array_equal(np.asarray(draft), expected["draft"])
  np.testing.assert_array_equal(np.asarray(final), expected["final"])
  bound = model.likelihood_bound(params, jnp.asarray(expected["data"], jnp.int32),
                                 jax.random.PRNGKey(6), inference_state)
  np.testing.assert_allclose(np.asarray(bound), expected["bound"], rtol=1e-5)
  with pytest.raises(ValueError, match="permutation_seed"):
    infer.load_inference_params(
        helpers.glauber_dit(config, letters, 6, num_rounds=2, permutation_seed=4), fixture, 3)
