"""Build-time check of the GPU image: the base ships the pinned Paddle, built with CUDA and TensorRT.

    python check_paddle.py 3.3.1
"""

from __future__ import annotations

import importlib.util
import re
import sys


def main(argv: list[str]) -> int:
    import paddle
    import paddle.inference as inference

    want = argv[1]
    problems = []
    if not re.fullmatch(rf"{re.escape(want)}(\D.*)?", paddle.__version__):
        problems.append(f"paddle {paddle.__version__} in the base image, pyproject.toml pins {want}")
    if not paddle.is_compiled_with_cuda():
        problems.append("paddle is not compiled with CUDA")
    trt = inference.get_trt_compile_version()
    if tuple(trt) == (0, 0, 0):
        problems.append("paddle is not compiled with TensorRT")
    # A PIR model (model.json) reaches TensorRT only through paddle.tensorrt.convert, which builds the engines
    # with TensorRT's Python API (service/trt_convert.py).
    for module in ("paddle.tensorrt", "tensorrt"):
        if importlib.util.find_spec(module) is None:
            problems.append(f"no Python module {module} (TensorRT for PIR models needs it: pip install "
                            f"tensorrt=={'.'.join(map(str, trt))} for the TensorRT the base ships)")
    for problem in problems:
        print(f"check_paddle: {problem}", file=sys.stderr)
    if not problems:
        print(f"paddle {paddle.__version__}, CUDA {paddle.version.cuda()}, cuDNN {paddle.version.cudnn()}, "
              f"TensorRT {'.'.join(map(str, trt))}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
