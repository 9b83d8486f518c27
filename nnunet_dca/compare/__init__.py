"""`nnunet-dca compare`: stock nnU-Net against DCA trainers on the user's datasets, configurations and folds.

One small module each: study.py (what to compare, validated against nnU-Net's folders), local.py and slurm.py
(training what is missing with nnU-Net's own `nnUNetv2_train`), locks.py (one training per fold at a time),
results.py (reading what nnU-Net wrote), statistics.py, figures.py and report.py (report.md, report.json and PNG
figures).

This file imports nothing: the command line reads TRAIN_MODES from it without importing nnU-Net, torch or scipy.
"""

# none: report only; local: train what is missing here; slurm: submit it as one sbatch job array
TRAIN_MODES = ("none", "local", "slurm")
