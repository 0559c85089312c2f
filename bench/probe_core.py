"""Quick probe: one config of sparse vs full on banking77 (used while tuning; bench_core.py is the table)."""
import sys, time, json
import torch
from clm_explore.data import load_data
from clm_explore.finetune import finetune
from clm_explore.config import FinetuneConfig, MaskConfig
torch.set_num_threads(2)
method, epochs = sys.argv[1], int(sys.argv[2])
extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
mask = MaskConfig(**extra.pop("mask", {}))
d = load_data('/work/shared/data/banking77')
r = finetune(d, FinetuneConfig(method=method, epochs=epochs, mask=mask, **extra), f'/tmp/probe_{method}_{int(time.time())}')
m = r.metrics
print(json.dumps({k: m.get(k) for k in ['method','accuracy','macro_f1','train_seconds','prep_seconds','peak_memory_mb','trainable_params','lowest_layer','val_curve','lr']}))
