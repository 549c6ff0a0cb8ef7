"""Train through fusion.engine.fit and save this process's final weights as OUT/rank<R>.pt.
Run alone or under torchrun by tests/test_distributed.py: python ddp_worker.py OUT [flags]."""
import os
import sys

import torch

from fusion.config import build_parser, resolve
from fusion.engine import fit

out, argv = sys.argv[1], sys.argv[2:]
_, model = fit(resolve(build_parser().parse_args(argv)))
torch.save(model.state_dict(), os.path.join(out, f"rank{os.environ.get('RANK', '0')}.pt"))
