"""The pretrained T5 / BART / GPT a text-to-text or in-context run starts from (`--init`).

    config = lm_init.config_from_init(config, init, families=('t5', 'bart'))
    exp = trainer.Experiment.build(config)
    params = lm_init.params_from_init(config, init, exp.layout)

`init` is one of
- 'none' (or ''): config.model as it is, randomly initialised (params_from_init gives None);
- an ssl_jax run directory (`ssl-jax train --workdir`): its latest checkpoint, or
  `<workdir>/checkpoints/<step>` for another step; the model and vocabulary settings come from
  the run's config.json;
- 'hf:DIR': a Hugging Face T5 / BART / GPT-2 directory (interop.hf). The model comes from its
  config.json; a T5 directory's spiece.model becomes the vocabulary (SentencePiece, 100 extra
  ids). Byte-level BPE vocabularies (GPT-2, BART) are not ssl_jax vocabularies: give a
  compatible one in config.data.vocab.
The fine-tuning settings of config.model (dropout_rate, attention_dropout_rate, dtype,
param_dtype, remat_policy, scan_layers) are kept.
"""
from __future__ import annotations

import copy
import json
import os

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from ssl_jax import checkpointing
from ssl_jax.models import config as model_config_lib
from ssl_jax.models import layers


def _is_none(init: str) -> bool:
  return init in ('', 'none')


def run_location(init: str) -> tuple[str, int | None]:
  """(run directory, step or None = latest) of an ssl_jax `init`."""
  path = init.rstrip('/') if '://' in init else os.path.normpath(init)   # gs://bucket/run
  parent = os.path.dirname(path)
  if os.path.basename(parent) == 'checkpoints' and os.path.basename(path).isdigit():
    return os.path.dirname(parent), int(os.path.basename(path))
  if not tf.io.gfile.exists(os.path.join(path, 'config.json')):
    raise FileNotFoundError(
        f"--init={init!r} is neither 'none', 'hf:DIR', an ssl_jax run directory (with "
        'config.json and checkpoints/) nor <run>/checkpoints/<step>; pass the --workdir of an '
        '`ssl-jax train` run.')
  return path, None


def _set_model(config, model_dict: dict, vocab: dict | None):
  config = copy.deepcopy(config)
  with config.unlocked():
    model = dict(model_dict)
    model.update({k: config.model[k]
                  for k in model_config_lib.FINETUNING_FIELDS if k in config.model})
    config.model = ml_collections.ConfigDict(model)
    if vocab is not None:
      config.data.vocab = ml_collections.ConfigDict(vocab)
  return config


def config_from_init(config, init: str, families: tuple[str, ...]):
  """`config` with the model (and vocabulary) of `init`, which must be of one of `families`;
  records `init` in config.finetune.init (and a run's checkpoint step in finetune.init_step)."""
  if _is_none(init):
    config = copy.deepcopy(config)
  elif init.startswith('hf:'):
    import transformers  # pylint: disable=g-import-not-at-top  (the optional interop extra)
    from ssl_jax.interop import hf  # pylint: disable=g-import-not-at-top
    directory = init[3:]
    if not os.path.isfile(os.path.join(directory, 'config.json')):
      raise FileNotFoundError(f'--init={init!r}: {directory}/config.json does not exist; give a '
                              'Hugging Face model directory.')
    model_cfg = hf.config_from_hf(transformers.AutoConfig.from_pretrained(directory))
    vocab = _hf_vocab(directory, getattr(model_cfg, 'family', 'gpt'))
    if vocab is None and config.data.vocab.kind == 'default':
      raise ValueError(
          f'--init={init!r} has neither spiece.model nor vocab.txt, and '
          "config.data.vocab.kind='default' is not the model's vocabulary; set config.data.vocab "
          '(kind, path) to the one it was trained with (byte-level BPE, as GPT-2 and BART use, is '
          'not an ssl_jax vocabulary).')
    config = _set_model(config, model_config_lib.config_to_dict(model_cfg), vocab)
  else:
    run_dir, step = run_location(init)
    saved = checkpointing.run_config(run_dir, '--init')
    config = _set_model(config, saved.model.to_dict(), saved.data.vocab.to_dict())
    with config.unlocked():
      config.finetune.init_step = init_step(init, run_dir, step, saved.train)
  family = config.model.get('family')
  if family not in families:
    raise ValueError(f"--init={init!r} is a {family!r} model; this run needs "
                     f"{' or '.join(map(repr, families))} (config.objective="
                     f"{config.objective!r}); pass a run or HF directory of that family.")
  with config.unlocked():
    config.finetune.init = init or 'none'
  return config


def _tokenizer_config(directory: str) -> dict:
  """HF `directory`'s tokenizer_config.json ({} without one)."""
  path = os.path.join(directory, 'tokenizer_config.json')
  if not os.path.isfile(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def hf_lower_case(directory: str) -> bool:
  """Whether the WordPiece tokenizer saved in HF `directory` lower-cases (tokenizer_config.json's
  do_lower_case; True, BertTokenizer's default, without one)."""
  return bool(_tokenizer_config(directory).get('do_lower_case', True))


def _hf_vocab(directory: str, family: str):
  """config.data.vocab for the tokenizer files in HF `directory` (T5's spiece.model, or the
  vocab.txt `ssl-jax convert` writes for a default or WordPiece vocabulary), or None. The path
  is absolute: the run's config.json is read from any directory."""
  directory = os.path.abspath(directory)
  spiece = os.path.join(directory, 'spiece.model')
  if os.path.isfile(spiece):   # T5's 100 sentinels, or the extra_ids `ssl-jax convert` wrote
    extra_ids = int(_tokenizer_config(directory).get('extra_ids', 100))
    return dict(kind='sentencepiece', path=spiece, extra_ids=extra_ids, lower_case=False)
  vocab_txt = os.path.join(directory, 'vocab.txt')
  if os.path.isfile(vocab_txt):   # T5's sentinels sit above the file's tokens, as seqio's
    # `ssl-jax convert` records the run's count (another than 100 gave other sentinel ids).
    extra_ids = _tokenizer_config(directory).get('extra_ids', 100 if family == 't5' else 0)
    return dict(kind='wordpiece', path=vocab_txt, extra_ids=int(extra_ids),
                lower_case=hf_lower_case(directory))
  return None


def init_step(init: str, run_dir: str, step, train_cfg: ml_collections.ConfigDict) -> int:
  """The checkpoint step of a run `init` (`step`, or the latest when None)."""
  manager = checkpointing.make_manager(run_dir, train_cfg, read_only=True)
  try:
    step = manager.latest_step() if step is None else step
    steps = manager.all_steps()
    if step is None or step not in steps:
      raise FileNotFoundError(
          f'--init={init!r} holds no complete checkpoint'
          + ('; train it first.' if not steps else
             f' at step {step}; its checkpoints are at steps {sorted(steps)} (name one as '
             f'{os.path.join(run_dir, "checkpoints", "<step>")}, or the run for its latest).'))
    return step
  finally:
    manager.close()


def params_from_init(config, init: str, layout):
  """The params of `init` laid out by `layout` (a trainer StateLayout of config's model), or
  None for 'none'. Raises ValueError naming a parameter whose shape differs."""
  if _is_none(init):
    return None
  if init.startswith('hf:'):
    from ssl_jax.interop import hf  # pylint: disable=g-import-not-at-top
    overrides = {k: config.model[k]
                 for k in model_config_lib.FINETUNING_FIELDS if k in config.model}
    _, params = hf.from_pretrained(init[3:], **overrides)
    expected, treedef = jax.tree_util.tree_flatten_with_path(layout.abstract.params)
    got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, leaf in expected:
      if path not in got or tuple(got[path].shape) != tuple(leaf.shape):
        raise ValueError(f'--init={init!r}: parameter {jax.tree_util.keystr(path)} has shape '
                         f'{getattr(got.get(path), "shape", None)} in the checkpoint but '
                         f'{leaf.shape} in config.model; leave config.model to the checkpoint.')
    params = jax.tree_util.tree_unflatten(   # in config.model.param_dtype
        treedef, [np.asarray(got[path]).astype(leaf.dtype) for path, leaf in expected])
    return jax.device_put(params, layout.shardings.params)
  run_dir, location_step = run_location(init)
  saved = checkpointing.run_config(run_dir, '--init')
  step = config.finetune.get('init_step')  # the step config_from_init read the model of
  if step is None:
    step = init_step(init, run_dir, location_step, saved.train)
  manager = checkpointing.make_manager(run_dir, saved.train, read_only=True)
  try:
    scanned = bool(saved.model.get('scan_layers', False))
    if scanned == config.model.scan_layers:
      checkpointing.check_compatible(manager, step, config, layout)
      return checkpointing.restore_params(manager, step, layout)
    # The run's layers are laid out the other way: restore them so, then stack or unstack.
    from ssl_jax import trainer  # pylint: disable=g-import-not-at-top  (trainer -> data -> ...)
    as_saved = copy.deepcopy(config)
    as_saved.model.scan_layers = scanned
    saved_layout = trainer.Experiment.build(as_saved, list(layout.mesh.devices.flat)).layout
    checkpointing.check_compatible(manager, step, as_saved, saved_layout)
    params = checkpointing.restore_params(manager, step, saved_layout)
    return jax.device_put(layers.with_layer_layout(params, config.model.scan_layers),
                          layout.shardings.params)
  finally:
    manager.close()
