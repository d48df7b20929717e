"""ssl_jax.finetune: downstream tasks and evaluation suites.

Encoder heads (BERT): `run.finetune` trains one of the objectives `classification`,
`regression`, `tagging`, `extractive_qa` (one module each) with the pretraining trainer and scores
the eval split (`evaluation`, `metrics`); `suite` runs several tasks into one table. `formats`
reads GLUE TSV / TFDS glue, CoNLL-U and SQuAD files; `data` turns them into batches;
`pretrained` loads the starting encoder (--init); `synthetic` writes tasks from the default corpus.
Generative models: `text_to_text` fine-tunes T5/BART on (input, target) text and scores decoded
outputs; `in_context` scores a GPT with zero-/few-shot prompts; `lm_init` loads their --init.
"""
