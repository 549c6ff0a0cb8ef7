"""Train through fusion.engine.fit and save this process's final weights as OUT/rank<R>.pt.
Run alone or under torchrun by tests/test_distributed.py: python ddp_worker.py OUT [flags].
With NAN_IN_VALIDATION_ON_RANK=R, rank R's validation losses are NaN."""
import os
import sys

import torch

import fusion.engine
from fusion.config import build_parser, resolve
from fusion.engine import fit

out, argv = sys.argv[1], sys.argv[2:]
if os.environ.get("NAN_IN_VALIDATION_ON_RANK") == os.environ.get("RANK", "0"):
    real = fusion.engine.F.cross_entropy

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        return loss if torch.is_grad_enabled() else loss * float("nan")
    fusion.engine.F.cross_entropy = poisoned
_, model = fit(resolve(build_parser().parse_args(argv)))
torch.save(model.state_dict(), os.path.join(out, f"rank{os.environ.get('RANK', '0')}.pt"))
