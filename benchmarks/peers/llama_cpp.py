"""llama.cpp's `llama-server` as a benchmark peer: built from the llama-cpp-python source
distribution (which vendors llama.cpp and its `convert_hf_to_gguf.py`) with cmake and g++, CPU
only, and a demo model converted to a float32 GGUF, both in the cache. A second run reuses them.

    .venv/bin/python benchmarks/peers/llama_cpp.py            # or: make llama-cpp
    .venv/bin/python benchmarks/peers/llama_cpp.py --sizes small,large --jobs 2

The build takes 10-30 minutes on 2 cores (31 with other work beside it). cmake comes from PATH (Debian's cmake 3.25 here; the
`cmake` PyPI package provides one where it is missing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from runtime.demo import build_demo_model  # noqa: E402

logger = logging.getLogger(__name__)

VERSION = "0.3.36"  # llama-cpp-python, as the real-models extra installs it
SDIST = f"llama_cpp_python-{VERSION}"
BUILD_COMMAND = "make llama-cpp  (or: .venv/bin/python benchmarks/peers/llama_cpp.py)"
# llama.cpp's own name for a byte-level BPE pre-tokenizer without a prefix space: the demo models'.
GPT2_PRE_TOKENIZER = "gpt-2"
CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_OPENSSL=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON",
                 "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF",
                 # The web UI would be downloaded: the benchmark needs only the API.
                 "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF")


def cache_dir() -> Path:
    return Path.home() / ".cache" / "kserve-llm-runtime" / "llama.cpp" / VERSION


def source_dir() -> Path:
    """The vendored llama.cpp inside the unpacked source distribution."""
    return cache_dir() / SDIST / "vendor" / "llama.cpp"


def server_path() -> Path:
    return cache_dir() / "build" / "bin" / "llama-server"


def gguf_path(size: str) -> Path:
    return cache_dir() / f"demo-{size}-f32.gguf"


def missing_parts(size: str) -> list[Path]:
    """What the benchmark needs of the build for the `size` demo model and does not find."""
    return [path for path in (server_path(), gguf_path(size)) if not path.is_file()]


def fetch_source() -> Path:
    """The source distribution, downloaded with pip and unpacked (once)."""
    if source_dir().is_dir():
        return source_dir()
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-cpp-sdist-") as download:
        logger.info("downloading the llama-cpp-python %s source distribution (about 77 MB) ...", VERSION)
        # --no-binary for this package alone: its build dependencies may come as wheels.
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
                        f"llama-cpp-python=={VERSION}", "--dest", download, "--progress-bar", "off"], check=True)
        archive = Path(download) / f"{SDIST}.tar.gz"
        with tarfile.open(archive) as tar:
            tar.extractall(cache_dir(), filter="data")
    return source_dir()


def build_server(jobs: int) -> Path:
    """`llama-server`, configured and built with cmake (incremental when built before)."""
    build = cache_dir() / "build"
    if not server_path().is_file():
        cmake = shutil.which("cmake")
        if cmake is None:
            raise SystemExit("cmake is missing: apt-get install cmake, or pip install cmake")
        logger.info("configuring llama.cpp with %s ...", cmake)
        subprocess.run([cmake, "-S", str(fetch_source()), "-B", str(build), *CMAKE_OPTIONS], check=True)
        logger.info("building llama-server with %d jobs (10-30 minutes on 2 cores) ...", jobs)
        subprocess.run([cmake, "--build", str(build), "--target", "llama-server", "-j", str(jobs)], check=True)
    return server_path()


def check_tokenizer(model_dir: Path) -> None:
    """The converter knows pre-tokenizers by a hash of what they make of a test string, and a
    tokenizer trained here has a hash of its own; it is llama.cpp's `gpt-2` pre-tokenizer only when
    it is a byte-level BPE that adds no prefix space, which is what is checked here."""
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    pre = tokenizer.get("pre_tokenizer") or {}
    if tokenizer["model"]["type"] != "BPE" or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space"):
        raise SystemExit(f"{model_dir}: only a byte-level BPE without a prefix space maps to llama.cpp's "
                         f"{GPT2_PRE_TOKENIZER!r} pre-tokenizer, this tokenizer is {pre}")


def convert(model_dir: Path, output: Path) -> Path:
    """`model_dir` as a float32 GGUF, by the vendored converter with its own gguf-py, its unknown
    pre-tokenizer hash read as `gpt-2` (see check_tokenizer) and, with no SentencePiece model in
    `model_dir`, its SentencePiece attempt skipped (it would need the sentencepiece package)."""
    if output.is_file():
        return output
    check_tokenizer(model_dir)
    source = fetch_source()
    sys.path[:0] = [str(source), str(source / "gguf-py")]
    import conversion  # the vendored converter's package, importable once its folder is on the path

    recognise = conversion.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            return GPT2_PRE_TOKENIZER

    def set_vocab_sentencepiece(self) -> None:
        # The converter tries SentencePiece first, importing it before it looks for the file.
        raise FileNotFoundError(self.dir_model / "tokenizer.model")

    conversion.TextModel.get_vocab_base_pre = get_vocab_base_pre
    if not (model_dir / "tokenizer.model").exists():
        conversion.TextModel._set_vocab_sentencepiece = set_vocab_sentencepiece
    partial = output.with_suffix(".partial")
    logger.info("converting %s to %s ...", model_dir, output)
    arguments = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outtype", "f32", "--outfile", str(partial)]
    try:
        runpy.run_path(str(source / "convert_hf_to_gguf.py"), run_name="__main__")
    finally:
        sys.argv = arguments
    os.replace(partial, output)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", default="small", help="comma-separated demo models to convert: small, large")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile jobs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    server = build_server(args.jobs)
    logger.info("llama-server: %s", server)
    for size in args.sizes.split(","):
        logger.info("GGUF of the %s demo model: %s", size, convert(build_demo_model(size), gguf_path(size)))


if __name__ == "__main__":
    main()
