"""Training-dynamics probes: what a pretrained model knows, and when it learned it.

Every probe is an evaluator (big_vision style) built from a `Subject` (the model of a
pretraining config or workdir) and fixed probe text, with `run(state) -> iterable of
(name, value)`; `state` is a TrainState or a params tree, so the same object serves the
training loop, the `ssl-jax probe` CLI (runner.py) and notebooks:

    from ssl_jax.probes import data, runner, subject
    s = subject.Subject.from_workdir("/tmp/bert")
    text = data.tokenize(data.corpus_sentences(256), s.vocab)
    [probe] = runner.make_evaluators(s, ["pos_accuracy"], text)
    for name, value in probe.run(s.restore(s.steps()[-1])): ...

| probe                  | objectives           | what                                            |
|------------------------|----------------------|-------------------------------------------------|
| pos_accuracy           | all four             | prediction accuracy per UPOS tag / frequency    |
| masking_kind_loss      | mlm                  | loss on [MASK] / random / kept positions        |
| span_length_loss       | span_corruption, denoising | loss by noise-span length                 |
| linear_probe           | all four             | ridge POS probe per layer (seen / unseen words) |
| contextual_similarity  | all four             | same word in other contexts vs other words      |
| attention_entropy      | all four             | entropy per layer and head                      |
| cka                    | all four             | linear CKA vs the last / previous checkpoint    |
"""
