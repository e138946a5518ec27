"""The CLI and its workers keep freed memory for reuse (``onnxprune.heap``)."""

import platform
import subprocess
import sys

import pytest

from onnxprune.heap import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_is_tuned_once_and_stays_tuned():
    assert keep_freed_memory() and keep_freed_memory()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_arrays_freed_and_made_again_reuse_the_same_pages():
    """Without the tuning each 64 MiB array is a fresh map: its pages fault in again."""
    code = ("import resource, sys, numpy as np\n"
            "from onnxprune.heap import keep_freed_memory\n"
            "if sys.argv[1] == '1': keep_freed_memory()\n"
            "np.ones(16 << 20, np.float32)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(20): np.ones(16 << 20, np.float32)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = [int(subprocess.run([sys.executable, "-c", code, tuned], capture_output=True,
                                 text=True, check=True).stdout) for tuned in "01"]
    assert faults[1] * 10 < faults[0]
