"""vitkit.allocator: glibc keeps freed blocks for reuse, measured as page faults in a fresh process."""

import json
import subprocess
import sys
import textwrap

import pytest

from vitkit import allocator

PROBE = textwrap.dedent("""
    import json, resource, sys, torch
    from vitkit.allocator import reuse_freed_memory

    def faults_of_a_fresh_tensor(mib):  # allocate and touch `mib` MiB, as a training step's activation
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        x = torch.empty(mib << 18)  # float32: mib MiB
        x.fill_(1.0)
        del x
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0

    kept = reuse_freed_memory() if sys.argv[1] == "reuse" else None
    for _ in range(3):  # the first steps grow the heap (small objects can take the freed space once)
        faults_of_a_fresh_tensor(40)
    print(json.dumps({"kept": kept, "faults": [faults_of_a_fresh_tensor(40) for _ in range(5)]}))
""")


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc malloc only")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    # 40 MiB is above glibc's largest sliding mmap threshold (32 MiB): by default every such block is a
    # fresh mapping, 10,240 pages of 4 KiB to fault in and zero (fewer where huge pages back it)
    default, reuse = probe("glibc"), probe("reuse")
    assert default["kept"] is None and reuse["kept"] == allocator.DEFAULT_THRESHOLD
    assert min(default["faults"]) > 0
    assert sorted(reuse["faults"])[2] <= min(default["faults"]) // 10, (default, reuse)  # the median step


def test_bad_threshold_is_refused():
    for bad in (0, -1, 2**31):
        with pytest.raises(ValueError, match="threshold must be between"):
            allocator.reuse_freed_memory(bad)
