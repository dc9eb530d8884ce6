"""transformers interop: import (config and weights to a spec and a model), export (native class or remote code), the model card."""
