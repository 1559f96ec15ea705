"""Write a random-weight Llama-3.2-1B-shaped GGUF (F16) and turn it into Q4_K_M with llama-quantize.

Speed does not depend on the weights' values, so this file measures how Ember scales past the
toy-sized real models. Shape: d 2048, 16 layers, 32/8 heads, ffn 8192, SmolLM2's 49152-token
vocabulary and tokenizer (so `ember run` works on it), tied embedding.

Usage: .venv/bin/python benchmarks/make_random_gguf.py [OUT_DIR]   (prints the Q4_K_M path)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np

LLAMA_BIN = Path.home() / ".cache/llama-cpp-peer/0.3.36/src/vendor/llama.cpp/build/bin"
HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, VOCAB = 2048, 16, 32, 8, 8192, 49152


def write_f16(path: Path) -> None:
    from ember.loader.gguf_file import read_gguf
    from ember.registry.resolve import resolve_model

    tokenizer_source = read_gguf(resolve_model("smollm2-135m-instruct").path, with_tensors=False)
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("random-llama-3.2-1b-shape")
    writer.add_block_count(LAYERS)
    writer.add_context_length(8192)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(VOCAB)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, value in tokenizer_source.metadata.items():
        if key.startswith("tokenizer."):
            if isinstance(value, list):
                sub = {
                    str: gguf.GGUFValueType.STRING,
                    int: gguf.GGUFValueType.INT32,
                    float: gguf.GGUFValueType.FLOAT32,
                }[type(value[0])]
                writer.add_array(
                    key, value
                ) if sub is gguf.GGUFValueType.STRING else writer.add_key_value(
                    key, value, gguf.GGUFValueType.ARRAY, sub
                )
            elif isinstance(value, bool):
                writer.add_bool(key, value)
            elif isinstance(value, int):
                writer.add_uint32(key, value)
            elif isinstance(value, str):
                writer.add_string(key, value)

    def tensor(name: str, rows: int, cols: int) -> None:
        scale = 1.0 / np.sqrt(cols)
        writer.add_tensor(
            name, (rng.standard_normal((rows, cols), dtype=np.float32) * scale).astype(np.float16)
        )

    tensor("token_embd.weight", VOCAB, HIDDEN)
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, dtype=np.float32))
    head_dim = HIDDEN // HEADS
    for layer in range(LAYERS):
        p = f"blk.{layer}"
        writer.add_tensor(f"{p}.attn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        writer.add_tensor(f"{p}.ffn_norm.weight", np.ones(HIDDEN, dtype=np.float32))
        tensor(f"{p}.attn_q.weight", HEADS * head_dim, HIDDEN)
        tensor(f"{p}.attn_k.weight", KV_HEADS * head_dim, HIDDEN)
        tensor(f"{p}.attn_v.weight", KV_HEADS * head_dim, HIDDEN)
        tensor(f"{p}.attn_output.weight", HIDDEN, HEADS * head_dim)
        tensor(f"{p}.ffn_gate.weight", FFN, HIDDEN)
        tensor(f"{p}.ffn_up.weight", FFN, HIDDEN)
        tensor(f"{p}.ffn_down.weight", HIDDEN, FFN)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path.home() / ".cache/ember-bench")
    out.mkdir(parents=True, exist_ok=True)
    f16, q4 = out / "random-1b-f16.gguf", out / "random-1b-q4_k_m.gguf"
    if not q4.is_file():
        if not f16.is_file():
            write_f16(f16)
        subprocess.run(
            [str(LLAMA_BIN / "llama-quantize"), str(f16), str(q4), "Q4_K_M", "2"],
            check=True,
            capture_output=True,
        )
        f16.unlink()
    print(q4)


if __name__ == "__main__":
    main()
