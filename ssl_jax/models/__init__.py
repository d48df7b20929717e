"""ssl_jax.models: model families as pure flax.linen modules.

config.py (dataclasses + presets), layers.py (shared blocks and the one LayerStack),
bert.py (BertModel, BertForPreTraining), gpt.py (GPT), encoder_decoder.py (T5 and BART),
decoding.py (KV-cache greedy / sampling loop).
"""
from ssl_jax.models.config import (PRESETS, BertConfig, EncoderDecoderConfig, GPTConfig,
                                   config_from_dict, config_to_dict, get_preset)

__all__ = ['PRESETS', 'BertConfig', 'EncoderDecoderConfig', 'GPTConfig', 'config_from_dict',
           'config_to_dict', 'get_preset']
