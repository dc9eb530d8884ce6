"""transformers interop: import (config and weights to a spec and a model), export (native
class or remote code), the model card.

One module per transformers family (``bert``, ``roberta``, ``deberta``, ``modernbert``; the
shape they share is ``family.Family``). ``FAMILIES`` is the one table of them, in the order
export tries them: a new family is one module and one entry here.
"""

from bertsmith.train.interop import bert, deberta, modernbert, roberta

FAMILIES = {f.model_type: f for f in (bert.FAMILY, roberta.FAMILY, modernbert.FAMILY, deberta.FAMILY)}
