"""`nnunet-dca compare`: stock nnU-Net against DCA trainers on the user's datasets, configurations and folds.

One small module each: study.py (what to compare, validated against nnU-Net's folders), local.py and slurm.py
(training what is missing with nnU-Net's own `nnUNetv2_train`), results.py (reading what nnU-Net wrote),
statistics.py, figures.py and report.py (report.md, report.json and PNG figures).
"""
