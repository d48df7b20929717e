"""Input pipeline: global batches, deterministic streams, and an iterator position that survives restarts."""
import hashlib
import importlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import seqio

from ssl_jax import partitioning
from ssl_jax.data import pipeline

_FAMILY = {"mlm": "bert", "causal_lm": "gpt", "span_corruption": "t5", "denoising": "bart"}
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(objective, global_batch_size=8, **data):
  config = importlib.import_module(f"configs.{_FAMILY[objective]}").get_config("tiny")
  config.data.corpus.num_documents = 64
  config.data.sequence_length = 64
  config.data.shuffle_buffer = 16
  config.data.update(data)
  config.train.global_batch_size = global_batch_size
  return config


@pytest.mark.parametrize("objective", ["mlm", "causal_lm", "span_corruption", "denoising"])
@pytest.mark.parametrize("pack", [True, False])
def test_global_batches_match_batch_spec_and_sharding(objective, pack):
  config = tiny_config(objective, pack=pack)
  mesh = partitioning.make_mesh(config.mesh)
  sharding = partitioning.batch_sharding(mesh)
  batch = next(pipeline.make_iterator(config, "train", sharding))
  spec = pipeline.batch_spec(config)
  assert set(batch) == set(spec)
  for name, array in batch.items():
    assert isinstance(array, jax.Array)
    assert (array.shape, array.dtype) == (spec[name].shape, spec[name].dtype), name
    assert array.sharding == sharding and len(array.addressable_shards) == 8
  # Segment ids mark real tokens whether packed or not (the models mask padding with them).
  tokens = {"mlm": "input_tokens", "causal_lm": "decoder_target_tokens"}.get(
      objective, "encoder_input_tokens")
  segments = {"mlm": "segment_ids", "causal_lm": "decoder_segment_ids"}.get(objective, "encoder_segment_ids")
  np.testing.assert_array_equal(np.asarray(batch[segments]) > 0, np.asarray(batch[tokens]) != 0)


def test_shards_are_disjoint_halves_of_the_batch():
  config = tiny_config("causal_lm")
  first = [next(iter(pipeline.make_dataset(config, "validation", shard_info=seqio.ShardInfo(i, 2))))
           for i in range(2)]
  assert [b["decoder_target_tokens"].shape[0] for b in first] == [4, 4]
  rows = [tuple(r) for b in first for r in b["decoder_target_tokens"].numpy()]
  assert len(set(rows)) == len(rows)


def test_batch_must_divide_among_processes():
  with pytest.raises(ValueError, match="config.train.global_batch_size=8"):
    pipeline.per_process_batch_size(tiny_config("causal_lm"), process_count=3)
  assert pipeline.per_process_batch_size(tiny_config("causal_lm"), process_count=4) == 2


def test_restore_refuses_a_different_process_count(tmp_path):
  ds = pipeline.make_dataset(tiny_config("causal_lm"), "train", shard_info=seqio.ShardInfo(0, 1))
  pipeline.DataIterator(ds, None, process_index=0, process_count=1).save(tmp_path)
  with pytest.raises(ValueError, match="saved by 1 processes, but 2"):
    pipeline.DataIterator(ds, None, process_index=0, process_count=2).restore(tmp_path)
  with pytest.raises(FileNotFoundError, match="process 1"):
    pipeline.DataIterator(ds, None, process_index=1, process_count=2).restore(tmp_path)


def test_a_shard_without_validation_documents_is_named(tmp_path):
  # 30 documents hold out one for validation: with 2 shards, shard 1's stream was empty and the
  # run died on a bare StopIteration before its first step.
  path = tmp_path / "docs.txt"
  path.write_text("\n\n".join(f"document {i} is here. it says {i % 7}." for i in range(30)))
  config = tiny_config("causal_lm", source="text_files", text_files=str(path), num_shards=2)
  pipeline.make_iterator(config, "train", None).next_local()
  with pytest.raises(ValueError, match=r"data shard 1 of 2 has no validation examples.*"
                     r"config.data.num_shards.*config.train.eval_steps=0"):
    pipeline.make_iterator(config, "validation", None).next_local()


def test_restore_refuses_text_files_that_changed(tmp_path):
  # The config names the files, not their contents: a position saved over 100 documents was
  # restored over 101 and tf.data failed a dozen batches later, naming nothing.
  path = tmp_path / "docs.txt"

  def write(n):
    path.write_text("\n\n".join(f"document {i} is here. it says {i % 7}." for i in range(n)) + "\n")
  config = tiny_config("causal_lm", global_batch_size=4, source="text_files",
                       text_files=str(path))
  write(100)
  it = pipeline.make_iterator(config, "train", None)
  first = [next(it) for _ in range(3)]
  it.save(tmp_path / "position")
  following = next(it)
  same = pipeline.make_iterator(config, "train", None)
  same.restore(tmp_path / "position")
  assert _digest(next(same)) == _digest(following) != _digest(first[0])
  write(101)
  with pytest.raises(ValueError, match=r"config.data.text_files \[.*docs.txt'\] changed since"):
    pipeline.make_iterator(config, "train", None).restore(tmp_path / "position")


def test_a_bert_position_saved_with_a_longer_predictions_axis_resumes_with_predictions_per_row(tmp_path):
  # Before 2026-12-02 a packed row's masked_* axis was ceil(0.15 * L) + S (12 at L = 64, S = 2);
  # it is now the exact most (10). Such a position restores only into a stream of its shapes.
  old = tiny_config("mlm", global_batch_size=4)
  old.data.mlm.predictions_per_row = 12
  it = pipeline.make_iterator(old, "train", None)
  assert next(it)["masked_positions"].shape == (4, 12)
  it.save(tmp_path / "position")
  following = next(it)
  with pytest.raises(ValueError, match=r"masked_positions: \[12\] in the checkpoint, \[10\] now.*"
                                       r"config.data.mlm.predictions_per_row=12"):
    pipeline.make_iterator(tiny_config("mlm", global_batch_size=4), "train", None).restore(
        tmp_path / "position")
  again = pipeline.make_iterator(old, "train", None)
  again.restore(tmp_path / "position")
  assert _digest(next(again)) == _digest(following)
  # The same rows as the exact axis gives, padded further.
  exact = pipeline.make_iterator(tiny_config("mlm", global_batch_size=4), "train", None)
  next(exact)
  batch = next(exact)
  for k, v in batch.items():
    np.testing.assert_array_equal(following[k][:, :v.shape[1]], v, err_msg=k)
  old.data.mlm.predictions_per_row = 8   # one example alone can have 9
  with pytest.raises(ValueError, match=r"config.data.mlm.predictions_per_row=8 is shorter than one "
                                       r"example's predictions \(up to 9\)"):
    next(pipeline.make_iterator(old, "train", None))

def _digest(batch) -> str:
  h = hashlib.sha256()
  for k in sorted(batch):
    h.update(k.encode())
    h.update(batch[k].tobytes())
  return h.hexdigest()


def _streams(directory, restore_from=None) -> dict:
  """Digests of the first 50 train batches of two objectives, saving the position after batch 5
  in `directory`; with `restore_from`, also 10 batches from the position saved there."""
  out = {}
  for objective in ("mlm", "span_corruption"):
    it = pipeline.make_iterator(tiny_config(objective, global_batch_size=4), "train", None)
    stream = []
    for i in range(50):
      if i == 5:
        it.save(f"{directory}/{objective}")
      stream.append(_digest(next(it)))
    out[objective] = stream
    if restore_from:
      again = pipeline.make_iterator(tiny_config(objective, global_batch_size=4), "train", None)
      again.restore(f"{restore_from}/{objective}")
      out["resumed_" + objective] = [_digest(next(again)) for _ in range(10)]
  return out


@pytest.mark.slow  # a fresh process (~25 s on 2 idle cores)
def test_same_seed_same_stream_in_another_process_and_restore_resumes_it(tmp_path):
  first_dir, second_dir = tmp_path / "a", tmp_path / "b"
  first_dir.mkdir()
  second_dir.mkdir()
  first = _streams(first_dir)  # this process: it has run other tests before, with their seeds
  # A fresh process: the same stream, then this one's position after batch 5.
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  process = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "streams", str(second_dir), str(first_dir)],
      cwd=_REPO, env=env, capture_output=True, text=True, timeout=600)
  assert process.returncode == 0, process.stderr[-3000:]
  second = json.loads(process.stdout.split("RESULT")[-1])
  for objective in ("mlm", "span_corruption"):
    assert first[objective] == second[objective]  # 50 identical batches in two processes
    assert len(set(first[objective])) == 50
    assert second["resumed_" + objective] == first[objective][5:15]


def test_digest_helper_is_order_sensitive():
  # Guards the stream test's digest: equal digests mean equal batches, feature by feature.
  assert _digest({"a": np.arange(4)}) != _digest({"a": np.arange(4)[::-1].copy()})
  assert _digest({"a": np.arange(2), "b": np.arange(2)}) != _digest({"a": np.arange(4)})


if __name__ == "__main__" and sys.argv[1:2] == ["streams"]:  # the fresh process of the test above
  sys.path.insert(0, _REPO)  # configs/
  print("RESULT" + json.dumps(_streams(*sys.argv[2:])))
