"""Session settings: one torch thread (tiny models stall on a busy 2-core machine)."""
import os
import sys

import torch

torch.set_num_threads(1)

# shared test helpers (tests/nets.py) importable from every test folder
sys.path.append(os.path.dirname(__file__))
