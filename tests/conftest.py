"""Session settings: one torch thread (tiny models stall on a busy 2-core machine)."""
import torch

torch.set_num_threads(1)
