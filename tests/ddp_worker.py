"""Train through fusion.engine.fit and save this process's final weights as OUT/rank<R>.pt.
Run alone or under torchrun by tests/test_distributed.py: python ddp_worker.py OUT [flags].
With NAN_IN_VALIDATION_ON_RANK=R, rank R's validation losses are NaN. With
KILL_RANK_AT=R:E:S, rank R SIGKILLs itself after training step S of (1-based) epoch E."""
import os
import signal
import sys

import torch

import fusion.engine
from fusion.config import build_parser, resolve
from fusion.engine import fit

out, argv = sys.argv[1], sys.argv[2:]
rank = os.environ.get("RANK", "0")
if os.environ.get("NAN_IN_VALIDATION_ON_RANK") == rank:
    real = fusion.engine.F.cross_entropy

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        return loss if torch.is_grad_enabled() else loss * float("nan")
    fusion.engine.F.cross_entropy = poisoned
if os.environ.get("KILL_RANK_AT", "").startswith(f"{rank}:"):
    _, kill_epoch, kill_step = map(int, os.environ["KILL_RANK_AT"].split(":"))
    real_epoch = fusion.engine.run_epoch
    epochs = []

    def run_epoch(*args, optimizer=None, on_step=None, **kwargs):
        if optimizer is not None:
            epochs.append(1)

        def step(k, batch):
            if on_step is not None:
                on_step(k, batch)
            if len(epochs) == kill_epoch and k == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_epoch(*args, optimizer=optimizer, on_step=step, **kwargs)
    fusion.engine.run_epoch = run_epoch
_, model = fit(resolve(build_parser().parse_args(argv)))
torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
