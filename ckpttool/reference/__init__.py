"""Reference models, data and training that produce real checkpoint fixtures.

The models of the PyTorch save/load tutorials are trained on real data (by default
scikit-learn's bundled handwritten digits, which needs no download), evaluated, and
saved in every way people save them, with a manifest of checksums, accuracy, loss
and the logits of a fixed probe batch. `reference check` (and the tests) reload those
files through ckpttool's own code-free reader, with the files `convert` and `remap`
make from them, and prove that what ckpttool reads still works as the same model.

Importing this package does not import torch: `ckpttool.reference.cli` can be added
to the main command group without slowing down commands that need no tensors. The
modules that train (`models`, `data`, `train`, `saving`, `fixtures`, `resume`) import
torch and are imported only when a reference command runs; so do `check`,
`compare`, `derived` and `located`.
"""
