"""Shared helpers of the PyTorch reference scripts: reading samples artifacts,
reading/writing subprune mask artifacts, loading a Hugging Face model dir."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

# Linear modules of one Llama decoder layer, in Wanda's find_layers order.
LINEARS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


def read_windows(path, limit=None):
    """The `tokens` column (list<u32>) of a samples artifact, as a list of lists."""
    tokens = pq.read_table(path, columns=["tokens"]).column("tokens").to_pylist()
    return tokens[:limit] if limit else tokens


def load_model(model_dir, dtype=torch.float32, attn="eager", rope64=False, gguf_file=None):
    """A Hugging Face model dir, or with `gguf_file` a GGUF file in it, which
    transformers dequantizes itself (with gguf-py) to float32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn, gguf_file=gguf_file)
    model.eval()
    model.config.use_cache = False
    if dtype == torch.float64:
        model = model.double()
    return exact_rope(model) if rope64 else model


def exact_rope(model):
    """Makes the rotary embedding compute inv_freq, angles, cos and sin in
    float64 (rounded to the model's dtype at the end). transformers computes
    them in float32 even for a float64 model."""
    rotary = model.model.rotary_emb
    cfg = model.config
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    params = getattr(cfg, "rope_parameters", None) or {}
    assert params.get("rope_type", "default") == "default", f"exact_rope handles default RoPE only, not {params}"
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))

    def forward(x, position_ids):
        freqs = position_ids[..., None].to(torch.float64) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        scale = rotary.attention_scaling
        return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)

    rotary.forward = forward
    return model


def write_mask(path, masks):
    """Writes {module: bool keep matrix [out, in]} in subprune's mask schema:
    module, row, in_features, keep (packed bits, LSB first, 1 = kept)."""
    modules, rows, ins, keeps = [], [], [], []
    for name, keep in masks.items():
        keep = np.asarray(keep, dtype=bool)
        packed = np.packbits(keep, axis=1, bitorder="little")
        for r in range(keep.shape[0]):
            modules.append(name)
            rows.append(r)
            ins.append(keep.shape[1])
            keeps.append(packed[r].tobytes())
    table = pa.table(
        {
            "module": pa.array(modules, pa.string()),
            "row": pa.array(rows, pa.uint32()),
            "in_features": pa.array(ins, pa.uint32()),
            "keep": pa.array(keeps, pa.binary()),
        }
    )
    pq.write_table(table, path)


def read_mask(path):
    """{module: bool keep matrix [out, in]} from a mask artifact (subprune's or ours)."""
    t = pq.read_table(path, columns=["module", "row", "in_features", "keep"]).to_pydict()
    by_module = {}
    for m, r, n, k in zip(t["module"], t["row"], t["in_features"], t["keep"]):
        by_module.setdefault(m, []).append((r, n, k))
    out = {}
    for m, entries in by_module.items():
        entries.sort()
        n = entries[0][1]
        bits = np.frombuffer(b"".join(k for _, _, k in entries), dtype=np.uint8).reshape(len(entries), -1)
        out[m] = np.unpackbits(bits, axis=1, bitorder="little")[:, :n].astype(bool)
        assert [r for r, _, _ in entries] == list(range(len(entries))), f"{m}: rows not 0..n-1"
    return out


def apply_mask(model, masks):
    """Zeroes, in place, the weights each mask prunes."""
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        w = params[name + ".weight"]
        assert tuple(w.shape) == keep.shape, f"{name}: weight {tuple(w.shape)} vs mask {keep.shape}"
        with torch.no_grad():
            w[~torch.from_numpy(keep)] = 0
