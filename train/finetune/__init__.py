"""``bertsmith finetune``: downstream fine-tuning and evaluation.

``config`` (typed settings), ``data`` (read, label, tokenise, batch), ``source`` (the encoder
to start from and its new head), ``metrics`` (GLUE and tagging scores), ``sift`` (DeBERTa's
scale-invariant fine-tuning), ``module`` (Lightning), ``run`` (one job), ``app`` (Hydra).
"""
