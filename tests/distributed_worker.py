"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (2 gloo processes):
the measurement command line for token and document weighting, then continued training under
accelerate; rank 0 writes what the test compares with a single process.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from distributed_cases import cli_args, train_tiny  # noqa: E402
from ke_utils.memory.distributed import finish, process_state  # noqa: E402
from ke_utils.commands.measure import main  # noqa: E402

folder = Path(sys.argv[1])
printed = {w: main(cli_args(folder, w, f"two-{w}.safetensors")) for w in ("token", "document")}
model, log = train_tiny()
if process_state().is_main_process:
    (folder / "two.json").write_text(json.dumps({"measure": printed, "train_loss": log["train_loss"].tolist()}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "two-trained.safetensors"))
finish()
