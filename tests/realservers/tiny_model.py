"""A tiny llama-architecture GGUF model, written by the tests themselves (no download).

2 layers, hidden size 64, 4 heads, feed-forward 128, a byte-level vocabulary of 259 tokens
(`<unk>`, `<s>`, `</s>`, then the 256 byte tokens `<0x00>`..`<0xFF>`), f32 weights: about
0.5 MB, loaded by llama.cpp in milliseconds.

Random weights would emit random bytes: invalid UTF-8 (which servers hold back while
streaming), control characters and a stray end-of-sequence. This model is well-formed by
construction instead:

- dimension 0 of every token embedding is a constant (1.0) and the other 63 are small;
  attention and feed-forward weights are tiny (std 0.02), so the residual stream of every
  position is dominated by that constant channel. RMSNorm rescales the hidden state but
  keeps the channel dominant: after the final norm it is about 6.3 while each other
  dimension is about 0.6.
- `output.weight` maps that channel to +2 for the favoured tokens (the ASCII letters and
  digits, `FAVOURED`) and to -10 for every other token (EOS, BOS, `<unk>`, spaces,
  punctuation, control bytes, bytes >= 0x80), with no other weight for those. Every other
  token's logit is about -63, every favoured one's about +12.5 (± a few, which depends on
  the current token and gives the text its variety): a gap of ~75 nats, so no sampler
  setting a test would use ever picks anything else.

So every answer is exactly `max_tokens` tokens, each one byte in [A-Za-z0-9] — valid
UTF-8 and one token per streamed chunk — and always ends with finish reason "length".
No space and no `<`, so no server trims the content and no stop string (`</s>`,
`<|im_end|>`) or reasoning tag can ever match. `FAVOURED` is exported for the tests.
"""

from __future__ import annotations

import os
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

N_EMBD = 64
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
N_CTX_TRAIN = 4096
RMS_EPS = 1e-5
ROPE_FREQ_BASE = 10000.0


@dataclass(frozen=True)
class Shape:
    """The model's size. TINY loads in milliseconds; WIDE has enough weights per token
    (~56 MB, memory-bound on a CPU) that batching several sequences shows."""

    n_embd: int = N_EMBD
    n_layer: int = N_LAYER
    n_head: int = N_HEAD
    n_ff: int = N_FF


TINY = Shape()
WIDE = Shape(n_embd=512, n_layer=4, n_head=8, n_ff=1536)

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_OFFSET = 3  # token id of byte b is b + 3
N_VOCAB = BYTE_OFFSET + 256

# The bytes the model may emit: ASCII letters and digits.
FAVOURED: frozenset[int] = frozenset((string.ascii_letters + string.digits).encode())

# ChatML, which both llama.cpp (by name and by Jinja) and llama-cpp-python understand.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CONSTANT = 1.0  # the constant channel of every token embedding
EMBED_NOISE = 0.1  # std of the other 63 embedding dimensions
WEIGHT_STD = 0.02  # std of attention and feed-forward weights
FAVOUR = 2.0  # output weight of the constant channel for favoured tokens
DISFAVOUR = -10.0  # ... and for all the others
OUTPUT_NOISE = 0.5  # std of favoured tokens' other output weights


def token_id_of_byte(b: int) -> int:
    return BYTE_OFFSET + b


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * N_VOCAB
    types = [int(gguf.TokenType.UNKNOWN), int(gguf.TokenType.CONTROL), int(gguf.TokenType.CONTROL)]
    types += [int(gguf.TokenType.BYTE)] * 256
    return tokens, scores, types


def _weights(seed: int, shape: Shape) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def small(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * WEIGHT_STD).astype(np.float32)

    # numpy shape (rows, cols) = (out, in); gguf stores it as ne = (in, out) like convert_hf.
    embd = (rng.standard_normal((N_VOCAB, shape.n_embd)) * EMBED_NOISE).astype(np.float32)
    embd[:, 0] = CONSTANT

    output = np.zeros((N_VOCAB, shape.n_embd), dtype=np.float32)
    output[:, 0] = DISFAVOUR
    for b in sorted(FAVOURED):
        t = token_id_of_byte(b)
        output[t, 0] = FAVOUR
        output[t, 1:] = rng.standard_normal(shape.n_embd - 1) * OUTPUT_NOISE

    head_dim = shape.n_embd // shape.n_head
    w: dict[str, np.ndarray] = {
        "token_embd.weight": embd,
        "output_norm.weight": np.ones(shape.n_embd, dtype=np.float32),
        "output.weight": output,
    }
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = np.ones(shape.n_embd, dtype=np.float32)
        w[p + "attn_q.weight"] = small(shape.n_embd, shape.n_embd)
        w[p + "attn_k.weight"] = small(shape.n_head * head_dim, shape.n_embd)
        w[p + "attn_v.weight"] = small(shape.n_head * head_dim, shape.n_embd)
        w[p + "attn_output.weight"] = small(shape.n_embd, shape.n_embd)
        w[p + "ffn_norm.weight"] = np.ones(shape.n_embd, dtype=np.float32)
        w[p + "ffn_gate.weight"] = small(shape.n_ff, shape.n_embd)
        w[p + "ffn_up.weight"] = small(shape.n_ff, shape.n_embd)
        w[p + "ffn_down.weight"] = small(shape.n_embd, shape.n_ff)
    return w


def write_tiny_model(path: Path, *, seed: int = 0, shape: Shape = TINY) -> Path:
    """Write the tiny model to `path` (atomically: concurrent writers are safe); return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        writer.add_name("llm-probe-exporter tiny test model")
        writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
        writer.add_vocab_size(N_VOCAB)
        writer.add_context_length(N_CTX_TRAIN)
        writer.add_embedding_length(shape.n_embd)
        writer.add_block_count(shape.n_layer)
        writer.add_feed_forward_length(shape.n_ff)
        writer.add_head_count(shape.n_head)
        writer.add_head_count_kv(shape.n_head)
        writer.add_rope_dimension_count(shape.n_embd // shape.n_head)
        writer.add_rope_freq_base(ROPE_FREQ_BASE)
        writer.add_layer_norm_rms_eps(RMS_EPS)

        tokens, scores, types = _vocab()
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(UNK_ID)
        writer.add_bos_token_id(BOS_ID)
        writer.add_eos_token_id(EOS_ID)
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(False)
        writer.add_chat_template(CHAT_TEMPLATE)

        for name, tensor in _weights(seed, shape).items():
            writer.add_tensor(name, tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_well_formed(text: str) -> bool:
    """True when `text` is made only of bytes the model may emit."""
    return all(ord(c) in FAVOURED for c in text)
