"""BERT pretraining: masked LM + next-sentence prediction (or sentence order: `data.mlm.sentence_task`).

  ssl-jax train --config configs/bert.py:tiny --workdir /tmp/bert_tiny      # 2 CPU cores, ~5 min
  ssl-jax train --config configs/bert.py:base --workdir $WORKDIR            # BERT-base, 110M params

Variants: tiny (default corpus, WordPiece over its lexicon), small (4 layers x 512, Google's
BERT-Small), base, large (a BERT `vocab.txt`:
`--config.data.vocab.path=.../vocab.txt`; real text: `--config.data.source=tfds` or `text_files`).
"""
from ssl_jax import config as config_lib


def get_config(arg: str = "tiny"):
  config = config_lib.base_config(objective="mlm", family="bert", preset=arg)
  if arg == "tiny":
    config_lib.use_tiny_run(config)
    # ALiBi instead of learned positions (MosaicBERT), with the slopes the paper gives 8 heads
    # (1/2 .. 1/16 for these 4). With learned positions the masked LM sits on the unigram
    # plateau (5.24 nats) for ~600 steps, until attention learns where to look; ALiBi starts
    # out looking nearby and leaves it within ~100. `--config.model.position_embedding=learned`
    # is the published BERT (as transformers has it).
    config.model.update(position_embedding="alibi", alibi_bias_max=4.0)
    config.train.update(num_steps=600, eval_every=200, save_every=200)
  else:
    config_lib.use_pod_run(config, vocab_kind="wordpiece", sequence_length=512,
                           global_batch_size=256, num_steps=1_000_000, learning_rate=1e-4,
                           warmup_steps=10_000)
    config.data.mlm.max_predictions = 80
  return config
