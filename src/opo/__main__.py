import os

from opo.cli import entry, main

if "TORCHELASTIC_RUN_ID" in os.environ:
    # Under torchrun: an uncaught error becomes this rank's error file, which torchrun prints as
    # the job's root cause (with the failing rank) when it stops the other ranks.
    from torch.distributed.elastic.multiprocessing.errors import record

    main = record(main)
entry(main)
