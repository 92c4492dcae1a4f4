"""Migrate a prototype prompt to a student from Python, one stage at a time (runs offline).

python examples/sdk_quickstart.py [N_TICKETS] [MAX_STEPS]
"""

import sys
from pathlib import Path

from apidistill import Distiller, load_config
from apidistill.resources import demo_run_file

cfg = load_config(demo_run_file())  # the demo's run file: SmolLM2 + a 1,580-token prompt
cfg.prompts.limit = int(sys.argv[1]) if len(sys.argv) > 1 else 60
cfg.training.max_steps = int(sys.argv[2]) if len(sys.argv) > 2 else -1
cfg.run_dir = str(Path("runs/sdk-quickstart").resolve())  # under the current folder
d = Distiller(cfg)
d.check_policy()  # terms first: raises PolicyDenied with the clause if the use is not allowed
d.harvest()  # cached in the run's journal: a re-run pays for nothing twice
d.build_dataset()
d.train()
print(d.evaluate().students["student"].metrics["agreement"])
