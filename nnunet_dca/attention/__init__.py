"""`nnunet-dca attention`: what a trained model's DCA attends to in one or more cases, as pictures and numbers.

model.py loads the model as nnUNetv2_predict does, case.py finds the cases and reads and preprocesses each as nnU-Net
does, tile.py picks the query and the sliding-window tile holding it, record.py runs the network there with DCA's
recorder on, statistics.py measures how peaked the attention is over every row, figures.py draws, run.py ties them
together.
"""

from nnunet_dca.attention.model import AttentionError
from nnunet_dca.attention.run import Request, Result, run_attention

__all__ = ["AttentionError", "Request", "Result", "run_attention"]
