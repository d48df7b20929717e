"""`ssl-jax eval-suite`: fine-tune one encoder on a list of tasks and tabulate the scores.

    table = suite.run(suite_config, workdir, init="hf:DIR")

The suite config (configs/finetune/suite.py) names the tasks -- config files in
`suite_config.config_dir` -- and where their data is: `files.<task>.train_file/eval_file`, or
by default `<data_dir>/<task>/{train,dev}.<ext>` (ext: tsv, conllu or json by format).
`overrides` apply to every task (0 or '' = keep the task's value). Each task runs in
`<workdir>/<task>/` (so a re-run resumes or re-scores); the table is written to
`<workdir>/scores.md` and `scores.json`.

A task's score is GLUE's: the mean of its metrics in percent (MRPC, QQP: F1 and accuracy;
STS-B: Pearson and Spearman), except CoLA, scored by Matthews correlation alone
(`formats.GlueSpec.score`); for SQuAD it is F1. The suite's score is the mean over tasks.
"""
import copy
import os

import jax

from ssl_jax import config as config_lib
from ssl_jax import metrics as metrics_lib
from ssl_jax.finetune import formats
from ssl_jax.finetune import run as run_lib

_EXTENSIONS = {"glue_tsv": "tsv", "conllu": "conllu", "squad_json": "json"}
_TRAINING_OVERRIDES = ("global_batch_size", "num_steps", "num_epochs", "sequence_length",
                       "learning_rate")


def task_config(suite, task: str):
  """The fine-tuning config of `task` with the suite's files and overrides applied."""
  path = os.path.join(suite.config_dir, f"{task}.py")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"task config {path!r} does not exist; name tasks after the files in "
                            "config.config_dir (configs/finetune), e.g. config.tasks='sst2,upos'.")
  config = config_lib.load_config_file(path, suite.variant)
  if "finetune" not in config:   # e.g. tasks='suite', or a pretraining config
    raise ValueError(f"config.tasks names {task!r}, but {path} is not a fine-tuning task config "
                     "(it has no finetune section); name task configs, e.g. "
                     "config.tasks='sst2,upos'.")
  files = suite.files.get(task, None)
  for split, default in (("train_file", "train"), ("eval_file", "dev")):
    explicit = files.get(split, "") if files is not None else ""
    if explicit:
      config.data[split] = explicit
    elif suite.data_dir and config.data.format in _EXTENSIONS:
      config.data[split] = os.path.join(suite.data_dir, task,
                                        f"{default}.{_EXTENSIONS[config.data.format]}")
  o = suite.overrides
  if "in_context" in config:   # no training: only the example limits apply
    unused = [k for k in _TRAINING_OVERRIDES if o[k]]
    if unused:
      raise ValueError(f"config.overrides.{unused[0]}={o[unused[0]]!r}: task {task!r} is scored "
                       "in context, without training or a sequence length of its own; set only "
                       "overrides.max_train_examples / max_eval_examples for in-context suites.")
  for section, key in (("train", "global_batch_size"), ("train", "num_steps"),
                       ("data", "sequence_length"), ("data", "max_train_examples"),
                       ("data", "max_eval_examples"), ("optim", "learning_rate"),
                       ("finetune", "num_epochs")):
    if o[key]:
      config[section][key] = o[key]
  if o.num_steps and not o.num_epochs:
    config.finetune.num_epochs = 0  # a step count given for the suite replaces the epochs
  if o.sequence_length and config.objective == "extractive_qa":
    query = config.data.qa.max_query_length   # the suite has no override for it
    if query > o.sequence_length - 4:
      raise ValueError(
          f"config.overrides.sequence_length={o.sequence_length}: task {task!r} keeps questions "
          f"of up to data.qa.max_query_length={query} tokens ({path}), which needs a sequence "
          f"length of {query + 4} or more ([CLS], two [SEP] and one passage token); raise "
          f"overrides.sequence_length, or lower max_query_length in {path}.")
  return config


def task_score(scores: dict, config) -> float:
  """Headline percent: SQuAD F1; for a GLUE task with its own metrics, the mean of those GLUE
  scores (CoLA: Matthews correlation alone); else the mean of the metrics (fractions -> percent)."""
  if "f1" in scores and "exact" in scores:
    return scores["f1"]
  spec = formats.GLUE.get(config.data.get("task", ""))
  names = (spec.score or spec.metrics) if spec else ()
  if not names or not set(names) <= set(scores):  # other metrics chosen (config.data.metrics)
    names = tuple(scores)
  return 100.0 * sum(scores[name] for name in names) / len(names)


def markdown(rows: list[dict], average: float, init: str) -> str:
  lines = [f"Fine-tuning scores, init `{init}`", "",
           "| task | objective | score | metrics |", "|---|---|---:|---|"]
  for r in rows:
    details = ", ".join(f"{k} {v:.4g}" for k, v in r["scores"].items() if not k.endswith("total"))
    lines.append(f"| {r['task']} | {r['objective']} | {r['score']:.2f} | {details} |")
  lines.append(f"| **average** | | **{average:.2f}** | |")
  return "\n".join(lines) + "\n"


def run(suite, workdir: str, init: str = "none") -> dict:
  """Fine-tunes and scores every task of `suite`; returns {'tasks': rows, 'average': x}."""
  tasks = [t.strip() for t in suite.tasks.split(",") if t.strip()]
  if not tasks:
    raise ValueError("config.tasks is empty; list task configs, e.g. --config.tasks=sst2,upos,squad.")
  if len(set(tasks)) != len(tasks):
    raise ValueError(f"config.tasks={suite.tasks!r} names a task twice; each task runs once, in "
                     "<workdir>/<task>.")
  unused = sorted(t for t in suite.files if t not in tasks and any(suite.files[t].values()))
  if unused:   # a file given for a task the suite does not run (a typo, or a task left out)
    raise ValueError(f"config.files.{unused[0]} is set, but config.tasks={suite.tasks!r} does not "
                     f"name {unused[0]!r}; add it to config.tasks, or drop its files.")
  configs = {t: task_config(suite, t) for t in tasks}
  for task, config in configs.items():   # every config, file and data error before any training
    try:
      run_lib.check(config, init)
    except FileNotFoundError as e:   # named for a task's config.data, which the suite sets
      files = [config.data.get(k) for k in ("train_file", "eval_file")]
      if not any(path and path in str(e) for path in files):
        raise
      raise FileNotFoundError(
          f"task {task!r} of config.tasks={suite.tasks!r}: {e} In a suite, a task's files are "
          f"config.files.{task}.train_file / eval_file, else <config.data_dir>/{task}/train and "
          f"dev files; or leave {task!r} out of config.tasks.") from None
  rows = []
  for task, config in configs.items():
    scores = run_lib.finetune(copy.deepcopy(config), os.path.join(workdir, task), init)
    rows.append({"task": task, "objective": run_lib.method(config),
                 "score": task_score(scores, config), "scores": scores})
  average = sum(r["score"] for r in rows) / len(rows)
  result = {"init": init, "tasks": rows, "average": average}
  if jax.process_index() == 0:
    metrics_lib.write_json(os.path.join(workdir, "scores.json"), result)   # a NaN score: null
    metrics_lib.write_atomically(os.path.join(workdir, "scores.md"), markdown(rows, average, init))
  return result
