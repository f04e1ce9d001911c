"""Run by tests/test_train.py under ``torchrun --nproc_per_node 2`` (two CPU processes, gloo).

``shards BUILD OUT``: each rank writes the sample ids the prepared DataLoader gives it for two epochs.
``train BUILD OUT [STOP]``: one stage 1-1 run on both ranks, optionally stopped after STOP steps.
"""

import json
import sys
from pathlib import Path

from emoslm.train.data import load_examples
from emoslm.train.loop import TrainConfig, accelerator_for, epoch_batches, make_loader, train

mode, build, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
config = TrainConfig(stage="1-1", data=str(build), out=str(out), adapter_dim=64, batch_size=1, max_steps=5,
                     save_every=2, held_out=0.2, lr=2e-3)


class Ids:
    """The collator's two faces the loader uses: a row's length (for ``LengthBatches``) and the batch."""

    def length(self, example):
        return len(example.target)

    def __call__(self, batch):
        return {"ids": [e.id for e in batch]}


if mode == "shards":
    accelerator = accelerator_for(config, out)
    loader = make_loader(load_examples(build, "1-1"), Ids(), config, accelerator)
    seen = {epoch: [i for batch in epoch_batches(loader, accelerator, epoch) for i in batch["ids"]]
            for epoch in (0, 1)}
    seen["resumed_1"] = [i for batch in epoch_batches(loader, accelerator, 1, skip=1) for i in batch["ids"]]
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(seen))
else:
    print(json.dumps(train(config, stop_after=int(sys.argv[4]) if len(sys.argv) > 4 else None)))
