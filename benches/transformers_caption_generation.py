"""Beam-search captions with transformers' `generate`, the reference side of
`cargo bench --workspace --bench caption_generation`: a random `BertLMHeadModel` of the text
config the Rust side wrote (RAM's and Tag2Text's decoder), from random tag-encoder tokens (40
per image), 3 beams from `[DEC] a picture of`, every caption held to `length` tokens
(min_length = max_length), with the cache of keys and values `generate` uses by default.

Usage: python transformers_caption_generation.py <text_config.json> <images> <length> <threads>
Prints {"seconds": the median of 3 timed calls after one warm-up}.
"""

import json
import statistics
import sys
import time

import torch
from transformers import BertConfig, BertLMHeadModel, DynamicCache, EncoderDecoderCache

SEP = 102
PROMPT = [30522, 1037, 3861, 1997]
TAG_TOKENS = 40


def main() -> None:
    config_path, images, length, threads = sys.argv[1], *map(int, sys.argv[2:])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    text = json.load(open(config_path))
    config = BertConfig(vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
                        num_hidden_layers=text["num_hidden_layers"], num_attention_heads=text["num_attention_heads"],
                        intermediate_size=text["intermediate_size"], layer_norm_eps=text["layer_norm_eps"],
                        max_position_embeddings=text["max_position_embeddings"], is_decoder=True,
                        add_cross_attention=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertLMHeadModel(config).eval()
    tag_tokens = torch.randn(images, TAG_TOKENS, text["hidden_size"])
    prompt = torch.tensor([PROMPT] * images)

    def generate():
        with torch.no_grad():
            # A decoder-only model given encoder states: `generate` would make a self-attention
            # cache alone, which BERT's cross-attention cannot use.
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            out = model.generate(input_ids=prompt, encoder_hidden_states=tag_tokens, num_beams=3,
                                 past_key_values=cache,
                                 max_length=length, min_length=length, eos_token_id=SEP, pad_token_id=0,
                                 repetition_penalty=1.0, do_sample=False)
        assert out.shape == (images, length), out.shape

    generate()
    times = []
    for _ in range(3):
        started = time.perf_counter()
        generate()
        times.append(time.perf_counter() - started)
    print(json.dumps({"seconds": statistics.median(times)}))


if __name__ == "__main__":
    main()
