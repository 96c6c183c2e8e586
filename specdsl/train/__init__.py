"""Training: `specc train` and `specc sample`. rundir.py is torch-free; the rest imports torch. The settings'
schema is the core's (specdsl/settings.py): a spec's `train { ... }` section is checked by the compiler."""
