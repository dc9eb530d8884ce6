"""The ``bertsmith`` commands other than the Hydra apps (``train``, ``finetune``): each module
adds its commands' parsers (``add_<command>(sub)``) and imports the heavy code only when a
command runs, so ``--help`` stays quick."""
