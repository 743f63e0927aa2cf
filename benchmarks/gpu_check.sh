#!/usr/bin/env bash
# The GPU check (docs/performance.md#gpu): from a fresh checkout on a machine with an NVIDIA GPU, in a few
# minutes, without the network:
#
#   bash benchmarks/gpu_check.sh            # results in $OUT (default runs/gpu_check)
#
# 1. Python. The machine's own Python with a CUDA build of torch, timm and transformers (a GPU image, e.g. the
#    one at /opt/torch/.venv): $VITKIT_PYTHON if set, else python3. vitkit's .venv is not used: it holds the
#    CPU build of torch. A virtual environment is made from that Python in $VITKIT_GPU_VENV (default
#    /tmp/vitkit-gpu-venv) with --system-site-packages, so it sees the installed packages, and the checkout on its
#    path (a .pth file, what an editable install writes; no pip, no network; if no environment can be made, that
#    Python runs with the checkout on PYTHONPATH). Packages it lacks install from a
#    wheel folder when $VITKIT_WHEELS names one (pip install --no-index --find-links), else the step that needs
#    them stops with a message naming them.
# 2. env.txt: nvidia-smi, the GPU, and the versions of torch, CUDA, cuDNN, timm and transformers.
# 3. The CUDA tests: pytest -m cuda on $CUDA_TESTS (default: the test files that use the marker, tests/test_cuda.py
#    and the CUDA cases of other modules) -> cuda_tests.log, cuda_tests.xml (JUnit).
# 4. The timing: benchmarks/gpu_check.py (ViT-B/16 and Swin-T against timm and transformers, bf16, inference and
#    training images/s) -> gpu_check.log, gpu_check.json, gpu_check.md.
#
# Each step has a time limit (TESTS_TIMEOUT, BENCH_TIMEOUT seconds) so the whole check ends within 8 minutes; a
# step that fails or runs out of time does not stop the next one. The exit status is 0 only if every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu_check}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python="${VITKIT_PYTHON:-python3}"
venv="${VITKIT_GPU_VENV:-/tmp/vitkit-gpu-venv}"
tests_timeout="${TESTS_TIMEOUT:-300}"
# the files pytest -m cuda collects: every test file that uses the marker
cuda_tests="${CUDA_TESTS:-$(grep -rl --include='*.py' 'pytest.mark.cuda' tests | sort | tr '\n' ' ')}"
bench_timeout="${BENCH_TIMEOUT:-150}"
status=0
started=$(date +%s)
step() { echo; echo "== $* ($(($(date +%s) - started)) s)"; }

step "1. Python environment in $venv"
if ! command -v "$python" >/dev/null 2>&1; then
  echo "no $python: set VITKIT_PYTHON to a Python with a CUDA build of torch" >&2
  exit 2
fi
if [ -x "$venv/bin/python" ] || "$python" -m venv --system-site-packages --without-pip "$venv"; then
  py="$venv/bin/python"
  site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # The checkout, then the chosen Python's own site-packages: when it is itself a virtual environment (as in GPU
  # images), --system-site-packages reaches only its base interpreter's. An `import` line of a .pth file runs
  # at start-up; site.addsitedir also reads the .pth files there.
  addsite=$("$python" -c 'import site, sys
print("; ".join(["import site"] + [f"site.addsitedir({p!r})" for p in site.getsitepackages() if p.startswith(sys.prefix)]))')
  printf '%s\n%s\n' "$PWD" "$addsite" > "$site/vitkit-checkout.pth"
  printf '#!/bin/sh\nexec "%s" -m vitkit.cli "$@"\n' "$py" > "$venv/bin/vitkit" && chmod +x "$venv/bin/vitkit"
else
  echo "could not create $venv: running $python itself with the checkout on PYTHONPATH"
  py="$python"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
need=$("$py" - <<'EOF'
import importlib.util
mods = {"torch": "torch", "timm": "timm", "transformers": "transformers", "safetensors": "safetensors",
        "yaml": "pyyaml", "tqdm": "tqdm", "numpy": "numpy", "pytest": "pytest", "sklearn": "scikit-learn",
        "huggingface_hub": "huggingface_hub"}
print(" ".join(pkg for mod, pkg in mods.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$need" ]; then
  if [ -n "${VITKIT_WHEELS:-}" ]; then
    echo "installing from $VITKIT_WHEELS: $need"
    # shellcheck disable=SC2086
    "$py" -m pip install --quiet --no-index --find-links "$VITKIT_WHEELS" $need || status=1
  else
    echo "missing packages: $need (set VITKIT_WHEELS to a folder of their wheels; without scikit-learn the" \
         "tests that train on the digits are skipped)"
  fi
fi
"$py" -c "import vitkit, torch; print('vitkit', vitkit.__version__, 'from', vitkit.__file__)" || exit 2

step "2. Machine -> $OUT/env.txt"
{
  date -u
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
  "$py" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "CUDA", torch.version.cuda,
      "cuDNN", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("torch sees no CUDA device")
for name in ("timm", "transformers", "huggingface_hub", "safetensors", "numpy", "triton"):
    try:
        print(name, __import__(name).__version__)
    except Exception as e:  # not installed, or fails to import
        print(name, "unavailable:", type(e).__name__, e)
EOF
} 2>&1 | tee "$OUT/env.txt"
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "torch sees no CUDA device: this check needs a GPU" >&2
  exit 2
fi

step "3. CUDA tests (pytest -m cuda $cuda_tests, at most $tests_timeout s) -> $OUT/cuda_tests.log"
timeout "$tests_timeout" "$py" -m pytest -q -m cuda -p no:cacheprovider -o addopts="-ra" \
  --junitxml="$OUT/cuda_tests.xml" $cuda_tests 2>&1 | tee "$OUT/cuda_tests.log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || { echo "CUDA tests: exit status $rc (124: out of time)"; status=1; }

step "4. Timing against timm and transformers (at most $bench_timeout s) -> $OUT/gpu_check.json"
timeout "$bench_timeout" "$py" benchmarks/gpu_check.py --json "$OUT/gpu_check.json" \
  --markdown "$OUT/gpu_check.md" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || { echo "timing: exit status $rc (124: out of time)"; status=1; }

step "done: exit status $status; files in $OUT"
ls -l "$OUT"
exit "$status"
