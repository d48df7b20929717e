"""The encoder a fine-tuning run starts from: `--init none | hf:DIR | WORKDIR`.

    config, encoder = pretrained.load(config, "hf:/path/to/all-MiniLM-L6-v2")
    params = pretrained.with_encoder(params, encoder)      # into a fresh, sharded state

- 'none': a randomly initialised encoder of config.model (the from-scratch baseline).
- 'hf:DIR': a Hugging Face BERT directory (config.json, model.safetensors or pytorch_model.bin,
  vocab.txt or tokenizer.json): config.model becomes its architecture and config.data.vocab its
  WordPiece vocabulary.
- WORKDIR: an ssl_jax BERT pretraining run (`ssl-jax train --config configs/bert.py ...`): its
  latest checkpoint's encoder, or `WORKDIR/checkpoints/<step>` for another step, with the run's
  model and vocabulary settings (config.json).
The checkpoint decides the model's shape; this config keeps the fine-tuning choices: dropout
rates, dtype, param_dtype, remat_policy and scan_layers (the layers are stacked or unstacked to
it), and its batch (the pretraining run's batch and mesh do not matter).
Only the encoder (`params['bert']`) is taken; pretraining heads are dropped, the task head is new.
"""
import copy
import json
import os

import jax
import ml_collections
import numpy as np

from ssl_jax.finetune import lm_init
from ssl_jax.models import bert
from ssl_jax.models import config as model_config_lib
from ssl_jax.models import layers


def _set_model(config, model_cfg, vocab: dict):
  config = copy.deepcopy(config)
  model = model_config_lib.config_to_dict(model_cfg)
  model.update({k: config.model[k]
                for k in model_config_lib.FINETUNING_FIELDS if k in config.model})
  with config.unlocked():
    config.model = ml_collections.ConfigDict(model)
    config.data.vocab = ml_collections.ConfigDict(vocab)
  return config


def _from_hf(config, directory: str):
  import transformers  # pylint: disable=g-import-not-at-top  (the optional interop extra)
  from ssl_jax.interop import hf  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(os.path.join(directory, "config.json")):
    raise FileNotFoundError(f"--init=hf:{directory}: {directory}/config.json does not exist; give "
                            "a Hugging Face model directory.")
  model_type = transformers.AutoConfig.from_pretrained(directory).model_type
  if model_type != "bert":   # before any weight is read
    raise ValueError(f"--init=hf:{directory} is a {model_type!r} model, not a BERT model; the "
                     "fine-tuning heads sit on a BERT encoder.")
  # transformers 5 saves a BERT tokenizer as tokenizer.json alone; earlier versions wrote vocab.txt.
  found = [os.path.join(directory, name) for name in ("vocab.txt", "tokenizer.json")
           if os.path.isfile(os.path.join(directory, name))]
  if not found:
    raise FileNotFoundError(
        f"--init=hf:{directory} has neither vocab.txt nor tokenizer.json; fine-tuning needs the "
        "checkpoint's WordPiece vocabulary next to config.json (save the tokenizer with the "
        "model).")
  vocab_path = os.path.abspath(found[0])   # the run's config.json is read from any directory
  overrides = {k: config.model[k]
               for k in model_config_lib.FINETUNING_FIELDS if k in config.model}
  model, params = hf.from_pretrained(directory, **overrides)
  encoder = params if isinstance(model, bert.BertModel) else params["bert"]
  vocab = dict(kind="wordpiece", path=vocab_path, extra_ids=0,
               lower_case=lm_init.hf_lower_case(directory))
  return _set_model(config, model.config, vocab), encoder


def _from_workdir(config, init: str):
  from ssl_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from ssl_jax import trainer  # pylint: disable=g-import-not-at-top
  run_dir, step = lm_init.run_location(init)
  saved = checkpointing.run_config(run_dir, "--init")
  # Lay the pretrained params out on this run's mesh, with this run's batch, which the mesh was
  # checked against.
  saved.logical_axis_rules = config.logical_axis_rules
  saved.mesh = copy.deepcopy(config.mesh)
  saved.train.update(global_batch_size=config.train.global_batch_size,
                     microbatches=config.train.microbatches)
  if saved.objective != "mlm":
    other = {"causal_lm": "configs/finetune/in_context/ (a GPT, scored in context)"}.get(
        saved.objective, "configs/finetune/text_to_text.py (a T5 or BART, by decoding)")
    raise ValueError(f"--init={init!r} was trained with objective {saved.objective!r}; the "
                     "fine-tuning heads need a BERT encoder (objective 'mlm'). Give a BERT run's "
                     f"--workdir, or evaluate this model with {other}.")
  exp = trainer.Experiment.build(saved)
  step = lm_init.init_step(init, run_dir, step, saved.train)
  manager = checkpointing.make_manager(run_dir, saved.train, read_only=True)
  params = checkpointing.restore_params(manager, step, exp.layout)
  manager.close()
  vocab = json.loads(saved.data.vocab.to_json())
  config = _set_model(config, exp.model_config, vocab)
  with config.unlocked():
    config.finetune.init_step = step
  return config, layers.with_layer_layout(params["bert"], config.model.scan_layers)


def load(config, init: str):
  """(config with the init's model and vocabulary, encoder params or None); also records
  `init` in config.finetune.init (and a run's checkpoint step in finetune.init_step)."""
  init = init or "none"
  if init == "none":
    config, encoder = copy.deepcopy(config), None
  elif init.startswith("hf:"):
    config, encoder = _from_hf(config, init[3:])
  else:
    config, encoder = _from_workdir(config, init)
  config.finetune.init = init
  return config, encoder


def with_encoder(params, encoder):
  """`params` with `params['bert']` replaced by the pretrained `encoder`, each array placed like
  the one it replaces. Extra encoder params (a pooler the task does not use) are ignored."""
  if encoder is None:
    return params

  def place(path, target):
    keys = [getattr(k, "key", getattr(k, "idx", k)) for k in path]
    source = encoder
    for key in keys:
      if key not in source:
        raise ValueError(f"the pretrained encoder has no parameter bert/{'/'.join(map(str, keys))};"
                         " the --init checkpoint is not a BERT encoder of this architecture.")
      source = source[key]
    if tuple(source.shape) != tuple(target.shape):
      raise ValueError(f"parameter bert/{'/'.join(map(str, keys))} has shape {source.shape} in the "
                       f"--init checkpoint but {target.shape} in the model; the configs disagree.")
    source = source if isinstance(source, jax.Array) else np.asarray(source)
    return jax.device_put(source.astype(target.dtype), target.sharding)

  return {**params, "bert": jax.tree_util.tree_map_with_path(place, params["bert"])}
