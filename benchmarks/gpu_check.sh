#!/usr/bin/env bash
# Prepared GPU check (about 6 minutes on one H200): run it where a GPU machine is lent.
#
#   1. here:  bash benchmarks/gpu_wheels.sh              # transformers 5.24 + pycma wheels into .whl/
#   2. there: bash benchmarks/gpu_check.sh               # device tool: run(command=..., carry=[".whl"], timeout_s=540)
#
# What it measures, in bfloat16 with sdpa on CUDA:
#   * correctness smoke test: greedy tokens of EvolKVCache with budgets >= the prompt equal DynamicCache's, and a
#     compressing run stores budget + new - 1 tokens per layer, for bf16 and fp16, sdpa and eager (tiny Llama);
#   * the cost table (benchmarks/cost_table.py) on a random Llama-3.1-8B-shaped model at 8k and 32k prompt
#     tokens, budgets 128 and 512: prefill + compression, decode ms/token over 64 tokens, K/V bytes, peak
#     CUDA memory, as ratios to DynamicCache in the same run.
# Results land in $OUT (the device tool's output folder) or benchmarks/results/gpu/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT_DIR"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
python3 - <<'PY' 2>&1 | tee "$OUT_DIR/smoke.log"
import torch, transformers
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
from evolkv_hf import EvolKVCache

print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name(0))
config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=2, vocab_size=1000, max_position_embeddings=4096)
failures = []
for dtype in (torch.bfloat16, torch.float16):
    for attn in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to("cuda", dtype).eval()
        model.config._attn_implementation = attn
        ids = torch.randint(5, 1000, (2, 300), device="cuda")
        mask = torch.ones_like(ids)
        mask[1, :40] = 0
        kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
        full = model.generate(**kw, cache=DynamicCache(config=model.config))
        kept = model.generate(**kw, cache=EvolKVCache(model, 400))
        cache = EvolKVCache(model, [64, 96, 128, 64])
        model.generate(**kw, cache=cache)
        ok_lengths = cache.stored_lengths() == [b + 12 - 1 for b in (64, 96, 128, 64)]
        print(f"{dtype} {attn}: uncompressed equal={torch.equal(full, kept)} stored lengths ok={ok_lengths}")
        if not ok_lengths:
            failures.append(f"{dtype} {attn}: stored lengths {cache.stored_lengths()}")
# Token equality of the uncompressed run is reported, not enforced: in half precision the per-layer masks can
# select another sdpa kernel, whose rounding may flip a near-tie.
if failures:
    raise SystemExit("FAILED: " + "; ".join(failures))
PY
python3 benchmarks/cost_table.py --model random:llama-3.1-8b --device cuda --dtype bfloat16 \
    --lengths 8192,32768 --budgets 128,512 --decode-tokens 64 --repeats 3 \
    --output "$OUT_DIR/cost_table_gpu.json" --plot "$OUT_DIR/scaling_gpu.png" 2>&1 | tee "$OUT_DIR/cost_table.log"
