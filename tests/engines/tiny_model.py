"""A tiny llama-architecture GGUF made at test time (no download): a deterministic chat model.

2 layers, hidden 64, a GPT-2-style byte-level vocabulary (256 byte tokens) plus ChatML's
``<|im_start|>`` / ``<|im_end|>``, and a ChatML chat template. Attention and feed-forward outputs are
zero, so each layer passes the residual stream through and the next token depends only on the current
one: the output weights wire a chain ``"\\n" → R[0] → R[1] → … → <|im_end|>``. After the chat template's
``<|im_start|>assistant\\n`` the model answers exactly ``REPLY`` (every character of which is distinct),
and given a prefill that stops inside ``REPLY`` it would go on from there — so tests can tell an engine
that continues a prefill from one that starts a new turn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPLY = "Hi, world!"
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
N_EMBD, N_LAYER, N_HEAD, N_FF = 64, 2, 4, 128


def _byte_chars() -> list[str]:
    """GPT-2's byte → printable unicode map (what a byte-level BPE vocabulary's tokens are spelled with)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def write_tiny_model(path: Path, reply: str = REPLY, context_length: int = 4096) -> Path:
    import gguf  # the test tier's dependency, not the product's

    if len(set(reply)) != len(reply) or "\n" in reply:
        raise ValueError("every character of the reply must be distinct (and no newline)")
    chars = _byte_chars()
    tokens = [*chars, chars[0] + chars[1], "<|im_start|>", "<|im_end|>"]
    types = [gguf.TokenType.NORMAL] * 257 + [gguf.TokenType.CONTROL] * 2
    im_start, im_end = len(tokens) - 2, len(tokens) - 1
    n_vocab = len(tokens)

    rng = np.random.default_rng(7)
    embd = rng.standard_normal((n_vocab, N_EMBD)).astype(np.float32)
    embd /= np.linalg.norm(embd, axis=1, keepdims=True)
    out = np.zeros((n_vocab, N_EMBD), dtype=np.float32)
    chain = [ord("\n"), *reply.encode()]
    nexts = [*reply.encode(), None]
    for cur, nxt in zip(chain, nexts, strict=True):
        out[im_end if nxt is None else nxt] += 10.0 * embd[cur]

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("homelab-tiny-chain")
    w.add_context_length(context_length)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{chars[0]} {chars[1]}"])
    w.add_bos_token_id(im_start)
    w.add_eos_token_id(im_end)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)

    zeros = np.zeros
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.add_tensor("output.weight", out)
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v"):
            w.add_tensor(f"blk.{i}.{name}.weight", (rng.standard_normal((N_EMBD, N_EMBD)) * 0.02).astype(np.float32))
        w.add_tensor(f"blk.{i}.attn_output.weight", zeros((N_EMBD, N_EMBD), dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", (rng.standard_normal((N_FF, N_EMBD)) * 0.02).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_up.weight", (rng.standard_normal((N_FF, N_EMBD)) * 0.02).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_down.weight", zeros((N_EMBD, N_FF), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


if __name__ == "__main__":
    import sys

    print(write_tiny_model(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf")))
